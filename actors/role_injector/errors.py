"""Role injector errors: one class per kind, each message says what to fix."""

from __future__ import annotations

from pathlib import Path

from bus.errors import ContractError
from schemas.wire import ErrorCode


class RoleInjectorError(ContractError):
    """Base class of the role injector's errors (a bad pack is ``invalid``, not retryable)."""

    code = ErrorCode.INVALID


class RolePackInvalid(RoleInjectorError):
    """A role pack breaks one of the rules the coordinator relies on."""

    def __init__(self, source: str, problem: str) -> None:
        self.source, self.problem = source, problem
        super().__init__(f"role pack {source}: {problem}")


class RolePackFileError(RoleInjectorError):
    """A role pack file cannot be read or parsed."""

    def __init__(self, path: Path, problem: str) -> None:
        self.path, self.problem = path, problem
        super().__init__(f"cannot load role pack from {path}: {problem}. "
                         "Give a .toml or .json file with name, version and roles.worker/thinker/verifier")


class UnknownRolePack(RoleInjectorError):
    """A request named a role pack this injector does not hold."""

    code = ErrorCode.NOT_FOUND

    def __init__(self, pack_id: str, known: list[str]) -> None:
        self.pack_id, self.known = pack_id, known
        super().__init__(f"unknown role pack {pack_id!r}; this injector holds {', '.join(known) or 'none'} "
                         "(load it with the role injector's pack_files setting, or leave role_pack empty)")
