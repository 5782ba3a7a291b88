"""What the commands print while working: one line per step, the message as it was given."""

from hepstream.cli.output import Progress


def test_a_step_prints_brackets_as_they_are_on_one_line(capsys):
    # A stage's last stderr lines, as run reports a death: Serve's ones quote HAProxy's config as "[file:line]".
    message = "server died: parsing [/tmp/haproxy-serve/haproxy.cfg:46] failed; [bold]not markup[/bold] " + "x" * 200
    Progress().step(message)
    printed = capsys.readouterr().err
    assert printed.endswith(f"  {message}\n") and printed.count("\n") == 1
