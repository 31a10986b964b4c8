"""One-line messages for errors every command can meet that are not about its inputs."""
import errno


def os_error_message(e: OSError) -> str:
    """A write that the file system refused (read-only folder, full disk, no permission), as one line with the fix."""
    where = e.filename or "the output folder"
    if isinstance(e, PermissionError) or e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return (f"cannot write {where}: {e.strerror or 'permission denied'}. Choose an output folder you can write "
                f"to (or fix its permissions) and run the command again.")
    if e.errno == errno.ENOSPC:
        return f"cannot write {where}: no space left on the device. Free space (or choose another folder) and rerun."
    return f"{where}: {e.strerror or e}"


# the errors os_error_message explains; anything else keeps its traceback (a bug to report)
EXPLAINED_OS_ERRORS = (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC)


def is_explained(e: BaseException) -> bool:
    return isinstance(e, OSError) and (isinstance(e, PermissionError) or e.errno in EXPLAINED_OS_ERRORS)
