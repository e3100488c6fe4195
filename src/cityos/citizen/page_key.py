"""The citizens' page's Open311 key for the demo city.

Open311 requires an `api_key` (--open311-api-key required), and the page (/city/) posts its reports
with `--citizen-open311-key`. `make run` names none, so when the demo city is served and no key is
configured, the start-up makes one: an API key of the trust layer named `citizen-page (demo)`, with
no role and no group, valid in the default tenant (it proves that a report comes from the page; it
grants nothing through NGSI-LD, where a key acts only through its roles, groups and the policies
that name them). The key an earlier start made is kept and given a new secret (its old token stops
working), so there is one such key whatever the number of starts. Its secret stays in the process
(and in the workers' environment); the log names only its id.
"""

from __future__ import annotations

import logging

from cityos.auth.credentials import Credentials
from cityos.auth.principal import ADMIN_ROLE, Principal

NAME = "citizen-page (demo)"
DEMO = Principal(id="demo-city", kind="cli", tenants=None, roles=frozenset({ADMIN_ROLE}))  # who makes it
log = logging.getLogger("cityos.citizen")


async def provision(credentials: Credentials) -> str:
    """The page's key with a new secret (made on the first start): its token."""
    mine = [row for row in await credentials.list_keys(DEMO) if row.name == NAME and row.revoked_at is None]
    for extra in mine[1:]:  # one page key: a second would be a leftover
        await credentials.revoke_key(DEMO, extra.id)
    issued = await (credentials.rotate_key(DEMO, mine[0].id) if mine else credentials.create_key(DEMO, name=NAME))
    log.info(
        "the citizens' page posts its reports to Open311 with the API key %s (%s, made for the demo city:"
        " --citizen-open311-key names another)",
        issued.row.id,
        NAME,
    )
    return issued.token
