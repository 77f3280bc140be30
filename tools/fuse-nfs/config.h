/* What upstream's autoconf (configure.ac) would find on Debian 12: st_atim in struct stat.
 * Written by hand so that build.sh needs no autotools. */
#define HAVE_ST_ATIM 1
