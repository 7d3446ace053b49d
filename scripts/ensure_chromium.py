"""Make sure a Chromium from the distribution's packages is installed; print its path.

The browser test of `nnfp serve` (tests/test_browser.py) drives a real headless Chromium with
Playwright, never a browser Playwright downloads: the machines that run the tests may be offline.
This finds `/usr/bin/chromium` (or `chromium` on PATH) and, where it is missing, installs the
Debian/Ubuntu package `chromium` with apt-get (as root, or through `sudo -n` where sudo needs no
password), running `apt-get update` first when the package is not known yet.

    python scripts/ensure_chromium.py          # prints /usr/bin/chromium, exit 0
    python scripts/ensure_chromium.py --check  # only looks: exit 1 if there is none

Exit codes: 0 found or installed, 1 missing and not installable (the message says what to install).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys

DEFAULT_PATH = "/usr/bin/chromium"
PACKAGE = "chromium"
HOW_TO_INSTALL = (
    f"install the distribution's Chromium: `sudo apt-get update && sudo apt-get install -y {PACKAGE}` "
    "(Debian/Ubuntu; Fedora: `sudo dnf install chromium`), so that /usr/bin/chromium or `chromium` "
    "on PATH exists"
)


class ChromiumMissing(RuntimeError):
    """No Chromium is installed and none could be installed; the message says what to do."""


def find_chromium() -> str | None:
    """The path of an installed Chromium, or None."""
    if os.access(DEFAULT_PATH, os.X_OK):
        return DEFAULT_PATH
    return shutil.which("chromium")


def _apt_prefix() -> list[str] | None:
    """How to run apt-get as root here (`[]` as root, `["sudo", "-n"]`), or None if we cannot."""
    if shutil.which("apt-get") is None:
        return None
    if os.geteuid() == 0:
        return []
    if shutil.which("sudo") is not None:
        return ["sudo", "-n"]  # never waits for a password: a test must not hang
    return None


def _run(command: list[str], log: list[str], timeout: float) -> bool:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as error:
        log.append(f"$ {' '.join(command)}: {error}")
        return False
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        log.append(f"$ {' '.join(command)}: exit {done.returncode}: " + " | ".join(tail))
    return done.returncode == 0


def ensure_chromium(timeout: float = 900.0) -> str:
    """The path of Chromium, installing the distribution's package first if it is missing.

    Raises:
        ChromiumMissing: none is installed and apt-get could not install one.
    """
    found = find_chromium()
    if found:
        return found
    prefix = _apt_prefix()
    if prefix is None:
        raise ChromiumMissing(
            f"Chromium is not installed and cannot be installed from here (needs apt-get, and root "
            f"or password-less sudo): {HOW_TO_INSTALL}"
        )
    log: list[str] = []
    install = [*prefix, "apt-get", "install", "-y", PACKAGE]  # recommends: fonts-liberation
    # A fresh image has no package lists: `apt-get install` fails until `apt-get update` ran.
    if not _run(install, log, timeout):
        if _run([*prefix, "apt-get", "update"], log, timeout):
            _run(install, log, timeout)
    found = find_chromium()
    if found:
        return found
    raise ChromiumMissing(f"Chromium is not installed and `apt-get install {PACKAGE}` failed "
                          f"({'; '.join(log)}): {HOW_TO_INSTALL}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only look for Chromium, install nothing")
    args = parser.parse_args(argv)
    try:
        path = find_chromium() if args.check else ensure_chromium()
    except ChromiumMissing as error:
        print(f"ensure_chromium: {error}", file=sys.stderr)
        return 1
    if path is None:
        print(f"ensure_chromium: Chromium is not installed: {HOW_TO_INSTALL}", file=sys.stderr)
        return 1
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
