"""The role injector actor: serves ``trinity.role.inject`` (RoleInjectRequest -> RoleInjectReply).

A nats ``micro`` service (``trinity-role-injector``) in the ``role-injectors`` queue group. An unknown
``role_pack`` gets a typed ``not_found`` error reply naming the packs held; malformed requests get the
bus's typed ``malformed`` reply. :func:`local_injector` gives the same behaviour in-process, for
coordinators configured with ``role_inject_mode="local"`` (the node wiring passes it in; the coordinator
never imports this package).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.client import Client

from actors.role_injector.builder import build
from actors.role_injector.errors import UnknownRolePack
from actors.role_injector.packs import BUILTIN_PACKS, PackRegistry, load_pack
from bus import subjects
from bus.service import ActorService, Endpoint, RequestContext
from bus.spans import set_error, span
from config.coordinator import RoleInjectorSettings
from schemas.roles import RoleInjectReply, RoleInjectRequest


def registry_from_settings(settings: RoleInjectorSettings) -> PackRegistry:
    """The packs named by the settings; default: ``default_pack``, else the first file's pack, else built-in."""
    files = [load_pack(f) for f in settings.pack_files]
    default = settings.default_pack or (files[0].pack_id if files else None)
    packs = (list(BUILTIN_PACKS) if settings.include_builtin else []) + files
    return PackRegistry(packs, default)


def local_injector(registry: PackRegistry) -> Callable[[RoleInjectRequest], Awaitable[RoleInjectReply]]:
    """An in-process injector (raises :class:`UnknownRolePack` for unknown packs)."""

    async def inject(req: RoleInjectRequest) -> RoleInjectReply:
        return build(registry.resolve(req.role_pack), req)

    return inject


class RoleInjectorActor:
    """The bus-facing role injector (see the module docstring)."""

    def __init__(self, nc: Client, settings: RoleInjectorSettings | None = None,
                 registry: PackRegistry | None = None) -> None:
        self.nc = nc
        self.settings = settings or RoleInjectorSettings()
        self.registry = registry or registry_from_settings(self.settings)
        self.service = ActorService(
            nc, name=self.settings.service_name, version="0.1.0",
            description="TRINITY role injector: builds an agent's messages for a role from a versioned role pack",
            metadata={"packs": ",".join(self.registry.known()), "default_pack": self.registry.default_id},
            endpoints=[Endpoint(name="inject", subject=subjects.ROLE_INJECT, request_type=RoleInjectRequest,
                                handler=self.handle, queue_group=subjects.QUEUE_ROLE_INJECTORS,
                                max_payload_bytes=self.settings.max_request_bytes,
                                max_concurrency=self.settings.max_concurrency)])

    async def handle(self, req: RoleInjectRequest, ctx: RequestContext) -> RoleInjectReply:
        """Endpoint handler, in a ``trinity.role.inject`` span (child of the caller's ``traceparent``)."""
        with span("trinity.role.inject", ctx.provenance, attributes={"trinity.role": req.role.label}) as sp:
            try:
                pack = self.registry.resolve(req.role_pack)
            except UnknownRolePack as e:
                set_error(sp, e.code.value, e.message)
                raise  # a ContractError (not_found): the service layer sends it as the typed error reply
            sp.set_attribute("trinity.role_pack", pack.pack_id)
            return build(pack, req)

    async def start(self) -> None:
        """Start serving."""
        await self.service.start()
        await self.nc.flush()  # the server has our subscriptions before start() returns

    async def drain(self, timeout: float = 5.0) -> None:
        """Stop taking requests and finish the running ones."""
        await self.service.drain(timeout=timeout)

    def stats(self) -> dict[str, Any]:
        """Endpoint counters."""
        return {"service": self.service.stats()}
