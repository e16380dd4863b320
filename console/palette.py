"""The command palette's provider: every command of the app and of the current screen."""

from __future__ import annotations

from functools import partial

from textual.command import DiscoveryHit, Hit, Hits, Provider

from .registry import Command, Offer, commands_for


class CommandsProvider(Provider):
    def _commands(self) -> list[tuple[Command, object]]:
        offer = getattr(self.app, "offer", Offer())
        pane = getattr(self.app, "pane", None)          # the console screen in front
        found = [(c, self.app) for c in commands_for("app", offer)]
        if pane is not None:
            found += [(c, pane) for c in commands_for(pane.MODE, offer)]
        return found

    async def discover(self) -> Hits:
        for command, target in self._commands():
            yield DiscoveryHit(command.title, partial(target.run_action, command.action),
                               help=command.help)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for command, target in self._commands():
            score = matcher.match(command.title)
            if score > 0:
                yield Hit(score, matcher.highlight(command.title),
                          partial(target.run_action, command.action), help=command.help)
