"""Running nnU-Net's own command-line tools from our multi-step commands (the demo, self-training): one subprocess
per step, its whole output in a log file, a progress bar fed from that output on a terminal, and on failure an
error that names the command and shows the end of its log.
"""
import os
import re
import shutil
import subprocess
import sys
from typing import Optional, Sequence


class CommandError(RuntimeError):
    """A command failed; the message names the command and ends with the tail of its output."""


def bin_path(name: str) -> str:
    """A console command installed next to the running interpreter (falls back to PATH)."""
    candidate = os.path.join(os.path.dirname(sys.executable), name)
    return candidate if os.path.isfile(candidate) else (shutil.which(name) or name)


def command_line(args: Sequence) -> str:
    """The command as a user would type it (console commands by name, not by their full path)."""
    return " ".join(str(a) for a in args)


def run_command(args: Sequence, env: dict, log_file: str, tail_lines: int = 40,
                progress_pattern: Optional[str] = None, progress_total: Optional[int] = None,
                progress_desc: str = "", quiet: bool = True) -> None:
    """Run ``args`` (a console command name and its arguments) with its output going to ``log_file``.

    With ``progress_pattern`` (a regular expression) and ``quiet`` False, a tqdm bar (shown on a terminal only)
    advances by one for every output line matching it, e.g. ``^Epoch \\d+`` for nnU-Net training.
    Raises :class:`CommandError` with the command and the tail of its output when it fails.
    """
    cmd = [bin_path(str(args[0]))] + [str(a) for a in args[1:]]
    os.makedirs(os.path.dirname(os.path.abspath(log_file)), exist_ok=True)
    bar = None
    if progress_pattern and not quiet:
        from tqdm import tqdm
        bar = tqdm(total=progress_total, desc=progress_desc, unit="step" if progress_total is None else "it",
                   disable=None, leave=False)
    pattern = re.compile(progress_pattern) if progress_pattern else None
    with open(log_file, "w") as log:
        log.write("$ " + " ".join(cmd) + "\n")
        log.flush()
        try:
            proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                    errors="replace", bufsize=1)
        except OSError as e:
            if bar is not None:
                bar.close()
            raise CommandError(f"could not start {' '.join(cmd)}: {e}") from e
        try:
            for line in proc.stdout:
                log.write(line)
                if bar is not None and pattern.search(line):
                    bar.update(1)
            rc = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            if bar is not None:
                bar.close()
    if rc != 0:
        with open(log_file, errors="replace") as f:
            lines = f.read().replace("\r", "\n").splitlines()
        tail = "\n".join(lines[-tail_lines:])
        raise CommandError(f"command failed (exit code {rc}): {' '.join(cmd)}\n"
                           f"full output: {log_file}\n--- last {tail_lines} lines ---\n{tail}")
