//! The extended-attribute ops: setxattr and removexattr reach every replica, getxattr and
//! listxattr the metadata replica (failing over).
//!
//! Touches the node table (the node's place) and the replicas through `reach.rs`; an access
//! ACL's effect on the setgid bit is `stamp.rs`'s rule.

use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::BorrowedFd;

use fuser::{Errno, INodeNo, ReplyEmpty, ReplyXattr};

use super::ChironFs;
use super::reach::{at, reply_empty};
use super::stamp::acl_clears_setgid;
use crate::engine::replica::Replica;
use crate::sys::{self, Credentials, XattrOp, XattrReply};

/// Where an xattr op runs.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Reach {
    /// A change: fanned out to every replica.
    Every,
    /// A question: the metadata replica answers, the next ones if it cannot.
    First,
}

impl ChironFs {
    /// SETXATTR `name` = `value` on every replica, `flags` as setxattr(2) takes them; an
    /// access ACL set by `caller` outside the file's group clears its setgid bit (see
    /// [`acl_clears_setgid`]).
    pub(super) fn do_setxattr(
        &self,
        caller: Credentials,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        reply: ReplyEmpty,
    ) {
        let _tree = self.tree_shared();
        let value = value.to_vec();
        let access_acl = name == OsStr::new("system.posix_acl_access");
        let result = self.xattr(
            "setxattr",
            Reach::Every,
            ino,
            Some(name),
            move |dir, n, attr| {
                let done = sys::xattr(dir, n, XattrOp::Set(attr, &value, flags))?;
                if access_acl {
                    let st = sys::lstat_at(dir, n)?;
                    let Credentials {
                        uid, gid, groups, ..
                    } = &caller;
                    if st.st_mode & libc::S_ISGID != 0
                        && acl_clears_setgid(*uid, *gid, groups, st.st_gid)
                    {
                        sys::chmod_at(dir, n, st.st_mode & 0o7777 & !libc::S_ISGID)?;
                    }
                }
                Ok(done)
            },
        );
        reply_empty(result, reply);
    }

    /// GETXATTR `name`; `size` 0 asks for the value's size only.
    pub(super) fn do_getxattr(&self, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _tree = self.tree_shared();
        let result = self.xattr(
            "getxattr",
            Reach::First,
            ino,
            Some(name),
            move |dir, n, attr| sys::xattr(dir, n, XattrOp::Get(attr, size as usize)),
        );
        reply_xattr(result, reply);
    }

    /// LISTXATTR; `size` 0 asks for the list's size only.
    pub(super) fn do_listxattr(&self, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _tree = self.tree_shared();
        let result = self.xattr("listxattr", Reach::First, ino, None, move |dir, n, _| {
            sys::xattr(dir, n, XattrOp::List(size as usize))
        });
        reply_xattr(result, reply);
    }

    /// REMOVEXATTR `name` on every replica.
    pub(super) fn do_removexattr(&self, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _tree = self.tree_shared();
        let result = self.xattr(
            "removexattr",
            Reach::Every,
            ino,
            Some(name),
            |dir, n, attr| sys::xattr(dir, n, XattrOp::Remove(attr)),
        );
        reply_empty(result, reply);
    }

    /// Runs `job(dir, entry, attribute)` on node `ino`'s entry, where `reach` says, with the
    /// attribute's `name` (an empty one for None). The caller holds the tree lock.
    fn xattr(
        &self,
        op: &str,
        reach: Reach,
        ino: INodeNo,
        name: Option<&OsStr>,
        job: impl Fn(BorrowedFd<'_>, &CStr, &CStr) -> io::Result<XattrReply> + Send + Sync + 'static,
    ) -> Result<XattrReply, Errno> {
        let place = self.place(ino)?;
        let attr = match name.map(sys::cstr) {
            Some(Ok(n)) => n,
            Some(Err(e)) => return Err(e.into()),
            None => CString::default(),
        };
        let rel = place.clone();
        let run = move |r: &Replica| at(r, &rel, |dir, n| job(dir, n, &attr));
        match reach {
            Reach::Every => {
                let done = self.mutate(op, &place, &Credentials::root(), run);
                // An ACL changes the mode: a directory's carried-forward attributes no
                // longer hold, nor does a fetch that was under way (crate::rules::dir_attrs).
                self.nodes.dir_attrs_drop(ino.0);
                done
            }
            Reach::First => self.read_meta(op, &place, run).map(|(_, answer)| answer),
        }
    }
}

/// Answers a getxattr or listxattr: the size asked for, or the data.
fn reply_xattr(result: Result<XattrReply, Errno>, reply: ReplyXattr) {
    match result {
        Ok(XattrReply::Size(n)) => reply.size(n as u32),
        Ok(XattrReply::Data(d)) => reply.data(&d),
        Ok(XattrReply::Done) => reply.error(Errno::EIO),
        Err(e) => reply.error(e),
    }
}
