"""Running a typer app so that every usage error is one line: `error: <what> (see <prog> --help)`.

Click would print a usage block and a boxed message; a user who mistyped an option needs one clear
line and exit code 2, the same as for any other bad input. Shared by `edge-evolver` and `host-trainer`.

Exceptions are recognised by class name, not imported: typer 0.10 (Python 3.6 boards) raises click's
classes, while recent typer versions raise those of their own vendored copy of click.
"""

import sys
from typing import Any

from ..errors import clip_line

EXIT_ERROR = 2


def fail(code: str, message: str) -> None:
    """Print the one-line error `error: CODE: message` (newlines folded) and exit 2."""
    import typer

    typer.echo(f"error: {code}: {clip_line(message, 1000)}", err=True)
    raise typer.Exit(code=EXIT_ERROR)


def version_option(prog_name: str, version: str) -> Any:
    """The root `--version` option of `prog_name`: prints `<prog_name> <version>` and exits. It is the one option
    without an environment variable: one left set would turn every command into a version print."""
    import typer

    def show(value: bool) -> None:
        if value:
            typer.echo(f"{prog_name} {version}")
            raise typer.Exit()

    return typer.Option(False, "--version", callback=show, is_eager=True, help="Print the version and exit.")


def _is(exc: BaseException, name: str) -> bool:
    return any(cls.__name__ == name for cls in type(exc).__mro__)


def _command_path(exc: BaseException, prog_name: str) -> str:
    ctx = getattr(exc, "ctx", None)
    return getattr(ctx, "command_path", None) or prog_name


def run_app(app: Any, prog_name: str) -> None:
    """Call a typer app in non-standalone mode and turn click's exceptions into exit codes."""
    try:
        code = app(prog_name=prog_name, standalone_mode=False)
    except Exception as exc:
        if _is(exc, "NoArgsIsHelpError"):  # a bare command: show its help, as click would
            sys.stderr.write(exc.format_message() + "\n")  # type: ignore[attr-defined]
            sys.exit(2)
        if _is(exc, "UsageError"):  # unknown option, bad value, missing argument
            message = exc.format_message()  # type: ignore[attr-defined]
            sys.stderr.write(f"error: {message} (see {_command_path(exc, prog_name)} --help)\n")
            sys.exit(2)
        if _is(exc, "Abort"):  # Ctrl-C at a prompt
            sys.stderr.write("interrupted\n")
            sys.exit(130)
        if _is(exc, "ClickException"):
            sys.stderr.write(f"error: {exc.format_message()}\n")  # type: ignore[attr-defined]
            sys.exit(getattr(exc, "exit_code", 1))
        raise
    sys.exit(code if isinstance(code, int) else 0)
