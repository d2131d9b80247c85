"""Who is asking, and what each role may do."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from schemas.common import Actor


class Role(StrEnum):
    viewer = "viewer"  # reads everything but secrets
    operator = "operator"  # works the queue, the plan, their own inbox and subscriptions
    admin = "admin"  # rules' mode and status, credentials, endpoints, tokens, other people's subscriptions
    service = "service"  # one service calling another


# The roles that satisfy a route's requirement. admin may do everything; service only
# what services do for each other (and what a viewer may read).
SATISFIES: dict[Role, frozenset[Role]] = {
    Role.viewer: frozenset(Role),
    Role.operator: frozenset({Role.operator, Role.admin}),
    Role.admin: frozenset({Role.admin}),
    Role.service: frozenset({Role.service, Role.admin}),
}
# When an identity provider names several roles, the one that may do most
RANK = (Role.admin, Role.operator, Role.service, Role.viewer)

Via = Literal["token", "oidc", "service", "system"]


@dataclass(frozen=True)
class Principal:
    """An authenticated caller, or the system itself (a rule, the sweep).

    ``name`` is who (the token's name, the identity provider's user, the service
    or rule), ``token_id`` which credential proved it (None for the system).
    """

    name: str
    role: Role
    token_id: str | None
    via: Via

    def may(self, needed: Role) -> bool:
        return self.role in SATISFIES[needed]

    def actor(self) -> Actor:
        """The principal as a change names it (the contract's Actor)."""
        return Actor(kind="system" if self.via in ("system", "service") else "person", name=self.name, role=self.role.value,
                     token_id=self.token_id)

    def record(self) -> dict[str, str | None]:
        """The principal as a change record keeps it."""
        return {"name": self.name, "role": self.role.value, "token_id": self.token_id, "via": self.via}


def system(what: str) -> Principal:
    """The system acting on its own: ``system("rule:high-value-order@3")``, ``system("sweep")``."""
    return Principal(f"system:{what}", Role.service, None, "system")
