"""The p2v error tree: each class carries its exit code and a message template."""

from __future__ import annotations

from typing import Any


class ExitCode:
    """Exit codes scripts can branch on (documented in docs/user/errors.md)."""

    OK = 0
    FAILURE = 1
    USAGE = 2
    HOST_KEY = 3
    BOOT_FAILED = 4
    INTEGRITY = 5
    SCHEDULER_UNREACHABLE = 6
    DRIVERS_UNAVAILABLE = 7
    SOURCE_MISMATCH = 8
    INTERRUPTED = 130


class P2VError(Exception):
    """{detail}"""

    exit_code: int = ExitCode.FAILURE

    def __init__(self, **fields: Any) -> None:
        self.fields = fields
        super().__init__(self.message)

    @property
    def message(self) -> str:
        template = (type(self).__doc__ or "{detail}").strip().splitlines()[0]
        try:
            return template.format(**self.fields)
        except (KeyError, IndexError):
            return f"{template} {self.fields}"


class UsageError(P2VError):
    """{detail}"""

    exit_code = ExitCode.USAGE


class InputNotFound(UsageError):
    """{what} not found: {path}. Check the path and try again."""


class CommandNotFound(P2VError):
    """required program {program!r} is not installed; install it (see README: make setup)."""


class CommandFailed(P2VError):
    """command {command} failed with exit code {returncode}: {stderr_tail}"""


class CommandTimeout(P2VError):
    """command {command} did not finish within {timeout:.0f} s"""


class GuestfsError(P2VError):
    """libguestfs failed while {action}: {detail}"""


class BootFailed(P2VError):
    """the guest did not boot: {reason} ({detail})"""

    exit_code = ExitCode.BOOT_FAILED


class LibvirtUnreachable(P2VError):
    """cannot connect to libvirt at {uri}: {detail}"""


class LibvirtFailed(P2VError):
    """libvirt failed while {action}: {detail}"""


class DomainExists(UsageError):
    """a domain named {name!r} already exists at {uri}; choose another --name or pass --replace"""


class TargetNotReady(UsageError):
    """the target is not ready, nothing was defined: {problems}"""


class DefineFailed(P2VError):
    """libvirt refused to define {name!r}: {detail}; the XML is kept in {xml}: fix it, then define it by hand with `virsh -c {uri} define {xml}`"""  # noqa: E501


class StartFailed(P2VError):
    """domain {name!r} is defined but did not start: {detail}; start it with `virsh -c {uri} start {name}`"""  # noqa: E501


class SourceSpecError(UsageError):
    """bad SOURCE {source!r}: {detail} (want ssh://[user@]host[:port] or an ssh_config Host alias)"""  # noqa: E501


class SshConfigRefused(SourceSpecError):
    """ssh_config for {source!r}: {detail}"""


class HostKeyError(P2VError):
    """{detail}"""

    exit_code = ExitCode.HOST_KEY


class HostKeyUnknown(HostKeyError):
    """the host key of {host} is not known ({key_type} {fingerprint}); if that is the server's key, rerun with --accept-new-host-key to record it in {known_hosts}"""  # noqa: E501


class HostKeyChanged(HostKeyError):
    """the host key of {host} has CHANGED ({key_type} {fingerprint}, {known_hosts} holds another key): refusing to connect; if the server really was reinstalled, remove its old entry with `ssh-keygen -f {known_hosts} -R '{pattern}'`"""  # noqa: E501


class DataChannelHostKey(HostKeyError):
    """the OpenSSH data channel to {host} was refused the host key the session verified ({key_type}): {detail}; refusing to copy over it (the address may lead to another machine for another client); rerun with P2V_DATA_CHANNEL=paramiko, and find out why"""  # noqa: E501


class SshUnreachable(P2VError):
    """cannot reach {host} port {port}: {detail}"""


class SshAuthFailed(P2VError):
    """{user}@{host} refused the login: {detail}; pass --identity FILE, load the key into ssh-agent, or set IdentityFile in ~/.ssh/config"""  # noqa: E501


class SshFailed(P2VError):
    """SSH to {host} failed: {detail}"""


class SudoFailed(P2VError):
    """sudo on {host} as {user} failed: {detail}; log in as root, or give the password in P2V_SUDO_PASSWORD or at the prompt"""  # noqa: E501


class RemoteCommandFailed(P2VError):
    """command `{command}` on {host} failed with exit code {returncode}: {stderr_tail}"""


class FixError(P2VError):
    """cannot fix the guest in {images}: {detail}"""


class UnsupportedGuest(FixError):
    """p2v fix does not support this guest ({what}): {detail}"""


class SourceDeviceError(UsageError):
    """{device} on {host}: {detail}"""


class IntegrityError(P2VError):
    """integrity failure copying {device}: chunk {index} (offset {offset}) arrived with sha256 {got} instead of {expected}, twice; the journal keeps every verified chunk, rerun to retry"""  # noqa: E501

    exit_code = ExitCode.INTEGRITY


class DestinationFull(P2VError):
    """no space left for {image}: {detail}; the journal is intact — free space and rerun the same command to resume"""  # noqa: E501


class StreamError(P2VError):
    """the data stream from {host} for {device} broke: {detail}; rerun the same command to resume"""  # noqa: E501


class ManifestInvalid(UsageError):
    """{file}: {count} problem(s) in the manifest; nothing was run"""

    def __init__(self, file: str, problems: list[str]) -> None:
        self.problems = problems
        super().__init__(file=file, count=len(problems))


class BatchBusy(P2VError):
    """another p2v batch (pid {pid}) is running on {state_dir}; wait for it to finish or stop it"""  # noqa: E501


class LedgerError(P2VError):
    """the batch ledger {path} is unreadable: {detail}; move it aside to start the ledger afresh (each job's work directory keeps its own progress)"""  # noqa: E501


class SchedulerUnreachable(P2VError):
    """cannot reach the Dask scheduler at {address}: {detail}; start it (`dask scheduler`) or check --scheduler; no job was started"""  # noqa: E501

    exit_code = ExitCode.SCHEDULER_UNREACHABLE


class SchedulerLost(P2VError):
    """lost the Dask scheduler at {address} while jobs ran ({detail}); the ledger marks them interrupted: restart the scheduler and rerun the same command to resume"""  # noqa: E501

    exit_code = ExitCode.SCHEDULER_UNREACHABLE


class NotEnoughSpace(UsageError):
    """not enough free space in {directory}: {free} free, the job needs about {needed} ({detail}); free some space or choose another --output-dir"""  # noqa: E501


class WorkDirMismatch(UsageError):
    """the work dir {work_dir} belongs to another job ({detail}); remove it with `p2v clean {name}` or choose another --name or --output-dir"""  # noqa: E501


class SyncNotReady(UsageError):
    """no completed copy of {device} in {output_dir} ({detail}); run (or rerun to finish) `p2v copy` with the same --output-dir and --name first"""  # noqa: E501


class FreezeRefused(UsageError):
    """cannot freeze {filesystems} on {host} ({detail}); nothing is frozen: pass --freeze=best-effort to go on without them, or leave out --freeze"""  # noqa: E501


class FreezeFailed(P2VError):
    """freezing or thawing the filesystems of {host} failed: {detail}"""


class FreezeExpired(P2VError):
    """the thaw timer on {host} thawed it after {timeout:.0f} s, before the final pass ended, so the images are not filesystem-consistent; rerun with a longer --freeze-timeout"""  # noqa: E501


class FreezeDeadline(P2VError):
    """not freezing {mountpoint} on {host}: the thaw timer fires in {left:.0f} s, under the {margin:.0f} s safety margin, and nothing is left frozen; rerun with a longer --freeze-timeout (it was {timeout:.0f} s)"""  # noqa: E501


class HookFailed(P2VError):
    """the {hook} hook failed on {host} with exit code {returncode} ({tail}); {outcome}"""


class UnsafePath(UsageError):
    """{what} {path} {problem}: p2v writes a server's disks and secrets there; {advice}"""


# -- bad input found before anything runs (p2v/inputs.py) -------------------------------------
class InputUnreadable(UsageError):
    """{what} {path} cannot be read: {detail}; give the file p2v wrote (UTF-8 JSON)"""


class NotADiskImage(UsageError):
    """{path} is not a disk image: {detail}; give a disk image (qcow2 or raw), nothing was booted or opened"""  # noqa: E501


class ImageNotImportable(UsageError):
    """--from-image {path}: {detail}; nothing was copied"""


class OutputDirUnusable(UsageError):
    """{flag} {path} {detail}; give a writable directory (it is created if missing), nothing was written"""  # noqa: E501


class SourceMismatch(P2VError):
    """{path} is not a copy of this source ({detail}); refusing to {action}: use another --output-dir or --name, or remove {files} to copy this source afresh"""  # noqa: E501

    exit_code = ExitCode.SOURCE_MISMATCH


class JournalUnreadable(UsageError):
    """the journal {path} is unreadable ({detail}); remove it and {part} to copy afresh, or use another --output-dir"""  # noqa: E501
