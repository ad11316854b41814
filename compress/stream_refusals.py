"""What a pass asks for that block weights streamed (recipe `stream: true`) cannot run: the options a
pass's `check_streaming` refuses, all of them at once (`NotStreamable`), each named at its recipe
line and by the key --set takes (runner_stream.check_streaming)."""

from __future__ import annotations

from dataclasses import dataclass

from compress.errors import BadValue, UserError


@dataclass
class Refusal:
    """One option of a pass whose value needs the whole model in memory: `key` (svd's fisher), its
    value in words (`shown`), what needs the model (`why`), the values that stream (`instead`), and
    the other keys of the pass the check read (`reads`: their --sets are named with the key's line)."""

    key: str
    shown: str
    why: str
    instead: str
    reads: tuple[str, ...] = ()

    def words(self, name: str, written: bool = True, dotted: str | None = None) -> str:
        """'svd.fisher: all needs ...; with stream: true set svd.fisher to block or none' (`written`:
        the recipe gave the key, else its value is the default; `dotted`: the key as --set names it)."""
        said = f"{name}.{self.key}: {self.shown}" if written else f"{name}.{self.key} (default {self.shown})"
        return f"{said} {self.why}; with stream: true set {dotted or f'{name}.{self.key}'} to {self.instead}"


class NotStreamable(UserError):
    """Every option of pass `name` that needs the whole model (`refusals`), raised at once so that a
    recipe is fixed in one go."""

    def __init__(self, name: str, refusals: list[Refusal]):
        super().__init__("; ".join(r.words(name) for r in refusals))
        self.name, self.refusals = name, refusals

    def lines(self, spec, index: int) -> list[str]:
        """'PATH:LINE: svd.fisher (default all) needs ...; ... set passes.2.svd.fisher to ...' per
        refusal, of the pass `spec` (recipe_passes.PassSpec), passes.`index` of its recipe: the line of the
        key where the recipe gives it (the pass's where not), with the --sets that made it."""
        return [f"{spec.where(BadValue(r.key, '', r.reads), 'stream')}: "
                f"{r.words(self.name, r.key in spec.keys, f'passes.{index}.{self.name}.{r.key}')}"
                for r in self.refusals]


def not_streamed(passes: list, specs: list) -> list[tuple[int, object, UserError]]:
    """(index, its recipe_passes.PassSpec, why) of each pass that does not run with block weights streamed as
    configured (its `check_streaming` raised: a NotStreamable where other values of its keys stream, else
    a UserError): what stream: true refuses (runner_stream.check_streaming), and what the advice for a
    teacher too big to hold resident reads (`stream_advice`)."""
    out = []
    for index, (p, spec) in enumerate(zip(passes, specs)):
        try:
            p.check_streaming()
        except UserError as e:
            out.append((index, spec, e))
    return out


def stream_advice(passes: list, specs: list) -> tuple[bool, str]:
    """(whether stream: true would run, in words) of a recipe's passes (`not_streamed`), for a teacher too
    big to hold resident: 'set stream: true in the recipe (...)', with the values its passes stream with where
    some key must change; else which passes never stream ('distill (passes.2) trains the whole model')."""
    refused = not_streamed(passes, specs)
    never = [f"{spec.name} (passes.{i})" for i, spec, e in refused if not isinstance(e, NotStreamable)]
    if never:
        return False, f"{' and '.join(never)} need{'s' if len(never) == 1 else ''} the whole model in memory, " \
                      "which stream: true does not hold"
    changes = [f"passes.{i}.{e.name}.{r.key}: {r.instead}" for i, _, e in refused for r in e.refusals]
    return True, ("set stream: true in the recipe (one block resident)" if not changes else
                  f"set stream: true in the recipe with {'; '.join(changes)} (then one block is resident)")
