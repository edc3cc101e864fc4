"""Every `taskrouter` subcommand answers --help, and every option and nested command there has a help text."""
from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from taskrouter.cli import COMMANDS, build_parser, main


def undocumented(parser: argparse.ArgumentParser, path: str):
    """'path option' for each argument (or nested command) of `parser` and below that has no help text."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helped = {choice.dest for choice in action._choices_actions if choice.help}
            for name, sub in action.choices.items():
                if name not in helped:
                    yield f"{path} {name}"
                yield from undocumented(sub, f"{path} {name}")
        elif not isinstance(action, argparse._HelpAction) and not action.help:
            yield f"{path} {'/'.join(action.option_strings) or action.dest}"


def command_parser(name: str) -> argparse.ArgumentParser:
    commands = next(a for a in build_parser([name])._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices[name]


@pytest.mark.parametrize("name", [name for name, _, _ in COMMANDS])
def test_every_command_explains_every_option(name, capsys):
    assert list(undocumented(command_parser(name), f"taskrouter {name}")) == []
    with pytest.raises(SystemExit) as exit_info:
        main([name, "--help"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"usage: taskrouter {name}")


def test_version_is_one_line_and_help_imports_no_torch():
    from taskrouter import __version__

    out = subprocess.run([sys.executable, "-m", "taskrouter.cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == f"taskrouter {__version__}"
    probe = ("import sys; from taskrouter.cli import main\n"
             "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
             "print('torch' in sys.modules, 'transformers' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True)
    assert out.stdout.strip().splitlines()[-1] == "False False", out.stderr
