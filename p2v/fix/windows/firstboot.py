"""The Windows first-boot driver install: a bounded pnputil script run as a startup script.

Mechanism: a local Group Policy *startup* script. Windows runs machine startup scripts at
every boot, as SYSTEM, before anyone logs on (a RunOnce key waits for a logon; a service
needs a service binary, which Windows has none of for a script). The script keeps its own
state beside the staged drivers: a try counter and a done marker, so it runs pnputil at most
MAX_TRIES times in all, then writes why it gave up and does nothing at later boots. It
never reboots the machine, so it cannot loop.

Everything here is text: the script, scripts.ini, gpt.ini, and the registry values the
Group Policy client keeps for startup scripts. The script uses a small, plain subset of
cmd.exe (set, set /a, set /p, if, goto, echo with redirection) so that the test suite can
run the very same text with an interpreter of that subset against a failing pnputil.
"""

from __future__ import annotations

import re

from p2v.fix.windows.hive import RegValue

MAX_TRIES = 3
SCRIPT_NAME = "p2v-firstboot.cmd"
STAGE_DIR = r"%SystemRoot%\Drivers\p2v-virtio"          # as the script sees it
STAGE_PATH = "Windows/Drivers/p2v-virtio"                 # under the system volume
GP_DIR = "Windows/System32/GroupPolicy"
SCRIPTS_DIR = f"{GP_DIR}/Machine/Scripts"
SCRIPT_PATH = f"{SCRIPTS_DIR}/Startup/{SCRIPT_NAME}"
SCRIPTS_INI = f"{SCRIPTS_DIR}/scripts.ini"
GPT_INI = f"{GP_DIR}/gpt.ini"
# The Group Policy scripts client-side extension and its tool extension: gpt.ini lists them in
# gPCMachineExtensionNames so the machine part of the local policy runs scripts.
SCRIPTS_CSE = "[{42B5FAAE-6536-11D2-AE5A-0000F87571E3}{40B6664F-4972-11D1-A7CA-0000F87571E3}]"
GP_KEYS = (r"Microsoft\Windows\CurrentVersion\Group Policy\Scripts\Startup",
           r"Microsoft\Windows\CurrentVersion\Group Policy\State\Machine\Scripts\Startup")
# pnputil exit codes that mean the drivers are in: done, reboot needed to finish, and
# "no more items" (added to the store, no such device present yet).
PNPUTIL_OK = (0, 3010, 259)
GIVE_UP = ("pnputil failed each time (last exit code %RC%); install the drivers in %STATE% "
           "by hand with pnputil or Device Manager")


def pnputil_command(style: str) -> str:
    """pnputil's command line for every staged .inf: legacy (Windows 7, 8) or modern."""
    if style == "legacy":
        return rf'pnputil.exe -i -a "{STAGE_DIR}\*.inf"'
    return rf'pnputil.exe /add-driver "{STAGE_DIR}\*.inf" /install'


def script_text(pnputil_style: str, max_tries: int = MAX_TRIES) -> str:
    """The startup script (CRLF line ends, as cmd.exe expects)."""
    ok = "\n".join(f"if %RC% EQU {code} goto done" for code in PNPUTIL_OK)
    lines = f"""@echo off
rem p2v first-boot driver install, written by p2v fix; run by Group Policy at startup as SYSTEM.
rem It runs pnputil at most MAX times over all boots, then gives up and says why in the log.
set STATE={STAGE_DIR}
set MAX={max_tries}
if exist "%STATE%\\firstboot.done" goto end
set TRIES=0
if exist "%STATE%\\firstboot.tries" set /p TRIES=<"%STATE%\\firstboot.tries"
set /a TRIES=TRIES+1
>"%STATE%\\firstboot.tries" echo %TRIES%
>>"%STATE%\\firstboot.log" echo attempt %TRIES% of %MAX%: {pnputil_command(pnputil_style)}
{pnputil_command(pnputil_style)} >>"%STATE%\\firstboot.log" 2>&1
set RC=%ERRORLEVEL%
>>"%STATE%\\firstboot.log" echo pnputil exit code %RC%
{ok}
if %TRIES% GEQ %MAX% goto giveup
>>"%STATE%\\firstboot.log" echo will try again at the next boot
goto end
:giveup
>>"%STATE%\\firstboot.log" echo giving up after %MAX% attempts: {GIVE_UP}
>"%STATE%\\firstboot.done" echo gave up
goto end
:done
>>"%STATE%\\firstboot.log" echo drivers installed
>"%STATE%\\firstboot.done" echo installed
:end
exit /b 0
"""
    return lines.replace("\n", "\r\n")


def _ini_sections(text: str) -> dict[str, list[tuple[str, str]]]:
    sections: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] | None = None
    for raw in text.splitlines():
        line = raw.strip().lstrip("\ufeff")
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], [])
        elif "=" in line and current is not None:
            key, _, value = line.partition("=")
            current.append((key.strip(), value.strip()))
    return sections


def _ini_text(sections: dict[str, list[tuple[str, str]]]) -> str:
    out = []
    for name, items in sections.items():
        out.append(f"[{name}]")
        out += [f"{k}={v}" for k, v in items]
    return "\r\n".join(out) + "\r\n"


def startup_index(scripts_ini: str) -> tuple[int, bool]:
    """Our script's index among the startup scripts, and whether it is already listed."""
    startup = _ini_sections(scripts_ini).get("Startup", [])
    indices = []
    for key, value in startup:
        match = re.fullmatch(r"(\d+)CmdLine", key, re.IGNORECASE)
        if match:
            if value.lower() == SCRIPT_NAME.lower():
                return int(match.group(1)), True
            indices.append(int(match.group(1)))
    return (max(indices) + 1 if indices else 0), False


def scripts_ini_with_ours(scripts_ini: str) -> str:
    """scripts.ini listing our startup script after any the machine already has."""
    index, present = startup_index(scripts_ini)
    sections = _ini_sections(scripts_ini)
    if not present:
        sections.setdefault("Startup", []).extend(
            [(f"{index}CmdLine", SCRIPT_NAME), (f"{index}Parameters", "")])
    return _ini_text(sections)


def gpt_ini_with_scripts(gpt_ini: str) -> str:
    """gpt.ini with the scripts extension enabled for the machine and the version bumped
    (the Group Policy client reprocesses a local policy whose version changed)."""
    sections = _ini_sections(gpt_ini)
    general = sections.setdefault("General", [])
    values = dict(general)
    names = values.get("gPCMachineExtensionNames", "")
    if SCRIPTS_CSE in names:
        return _ini_text(sections) if gpt_ini.strip() else gpt_ini
    version = int(values.get("Version", "0") or 0) + 1
    values["gPCMachineExtensionNames"] = SCRIPTS_CSE + names
    values["Version"] = str(version)
    sections["General"] = list(values.items())
    return _ini_text(sections)


def registry_values(index: int, drive: str) -> list[tuple[str, str, RegValue]]:
    """(SOFTWARE key, value name, value) the Group Policy client keeps for a startup script
    of the local policy, in its policy and state trees."""
    gpo = {
        "GPO-ID": RegValue.sz("LocalGPO"),
        "SOM-ID": RegValue.sz("Local"),
        "FileSysPath": RegValue.sz(f"{drive}:\\Windows\\System32\\GroupPolicy\\Machine"),
        "DisplayName": RegValue.sz("Local Group Policy"),
        "GPOName": RegValue.sz("Local Group Policy"),
        "PSScriptOrder": RegValue.dword(1),
    }
    script = {
        "Script": RegValue.sz(SCRIPT_NAME),
        "Parameters": RegValue.sz(""),
        "IsPowershell": RegValue.dword(0),
        "ExecTime": RegValue.qword(0),
    }
    out = []
    for base in GP_KEYS:
        out += [(f"{base}\\0", name, value) for name, value in gpo.items()]
        out += [(f"{base}\\0\\{index}", name, value) for name, value in script.items()]
    return out
