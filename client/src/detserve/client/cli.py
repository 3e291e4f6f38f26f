"""The `detserve` command.

The client distribution owns the command so that `detserve detect` works with only detserve-client
installed. Other distributions (the full detserve kit) add subcommands through the
``detserve.commands`` entry-point group.
"""

from __future__ import annotations

import sys
from importlib.metadata import entry_points

import click


class PluginGroup(click.Group):
    """A click group that also lists subcommands registered by installed distributions."""

    def _plugins(self) -> dict:
        return {ep.name: ep for ep in entry_points(group="detserve.commands")}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._plugins()))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is not None:
            return command
        plugin = self._plugins().get(name)
        return plugin.load() if plugin is not None else None


@click.group(cls=PluginGroup, context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """detserve: train, export, serve and call object detectors on TensorFlow Serving."""


if __name__ == "__main__":
    sys.exit(main())
