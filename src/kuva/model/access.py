"""Access rules by register holder (rekisterinpitäjä): who may read whose material.

Every study, image and XDS entry belongs to the organisation whose node archived it
(its register holder). A requester always reads its own organisation's material.
Another organisation's material is read only on a recorded basis: an ``AccessRule``
names the register holder, the recipient (either may be ``ANY``) and the basis as it
is to be written in the disclosure log; with ``honour_prohibition`` (the national
archive's rule "disclosure allowed unless the patient has prohibited it") a
patient's disclosure prohibition keeps that patient's material with its register
holder. Without a rule, nothing of another organisation is readable.

This module is pure: ``AccessScope`` is what one requester may read, as data; the
index turns it into a condition (kuva.index.access), services.access decides it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

ANY = "*"


@dataclass(frozen=True)
class Basis:
    """Why another organisation's material may be read, as the disclosure log says."""

    text: str
    honour_prohibition: bool = True


@dataclass(frozen=True)
class AccessRule:
    register_holder: str  # an OID or ANY
    recipient: str  # an OID or ANY
    basis: Basis

    def covers(self, register_holder: str, recipient: str) -> bool:
        return self.register_holder in (ANY, register_holder) and self.recipient in (
            ANY,
            recipient,
        )


@dataclass(frozen=True)
class AccessScope:
    """What one requester may read.

    ``unrestricted``: everything (the embedded default's single organisation).
    ``organization``: the requester's own organisation (None = unknown: only what a
    rule for ``ANY`` recipient allows). ``bases``: the other register holders
    readable and on what basis; the key ``ANY`` stands for every other holder.
    ``apart``: holders whose material no rule discloses to another organisation
    (those in testing, services.directory: their test data is kept apart).
    """

    organization: str | None
    bases: Mapping[str, Basis] = field(default_factory=dict)
    unrestricted: bool = False
    apart: frozenset[str] = frozenset()

    def is_own(self, register_holder: str) -> bool:
        return self.unrestricted or (
            self.organization is not None and register_holder == self.organization
        )

    def basis_for(self, register_holder: str) -> Basis | None:
        """The basis of reading ``register_holder``'s material; None when there is
        none (or it is the requester's own)."""
        if self.is_own(register_holder) or register_holder in self.apart:
            return None
        return self.bases.get(register_holder) or self.bases.get(ANY)

    def readable(self, register_holder: str, *, prohibited: bool) -> bool:
        if self.is_own(register_holder):
            return True
        basis = self.basis_for(register_holder)
        return basis is not None and not (prohibited and basis.honour_prohibition)

    def holders(self, *, honouring: bool) -> tuple[frozenset[str], bool]:
        """The other holders readable on a basis that honours a prohibition (or
        not): (named holders, whether ANY other holder is)."""
        named = frozenset(
            holder
            for holder, basis in self.bases.items()
            if holder != ANY and holder not in self.apart and basis.honour_prohibition == honouring
        )
        wildcard = self.bases.get(ANY)
        return named, wildcard is not None and wildcard.honour_prohibition == honouring


def _specificity(rule: AccessRule) -> int:
    return (rule.register_holder != ANY) * 2 + (rule.recipient != ANY)


def scope_of(
    organization: str | None,
    rules: Iterable[AccessRule],
    apart: frozenset[str] = frozenset(),
) -> AccessScope:
    """The scope of ``organization`` under ``rules``: for each known register holder
    other than itself, and for ANY other, the most specific rule that covers it
    (a named holder before ANY, a named recipient before ANY)."""
    ordered = sorted(rules, key=_specificity, reverse=True)
    named = {r.register_holder for r in ordered if r.register_holder != ANY}
    recipient = organization or ""
    bases: dict[str, Basis] = {}
    wildcard = next(
        (r.basis for r in ordered if r.register_holder == ANY and r.recipient in (ANY, recipient)),
        None,
    )
    if wildcard is not None:
        bases[ANY] = wildcard
    for holder in sorted(named):
        if holder == organization:
            continue
        basis = next((r.basis for r in ordered if r.covers(holder, recipient)), None)
        if basis is not None and basis != wildcard:
            bases[holder] = basis
    return AccessScope(organization, bases, apart=apart - {organization or ""})
