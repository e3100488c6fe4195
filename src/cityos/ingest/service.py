"""What `cityos serve` runs for ingestion: the IoT Agent (HTTP routes, MQTT subscriber) and the
demo city loaded into an empty database. create_app builds one IngestService and starts it after
the store and the subscription matcher, so ingested changes are notified like any other."""

from __future__ import annotations

import logging

from starlette.routing import Route

from cityos.entities import update
from cityos.ingest import iot_http
from cityos.ingest.iot_agent import IotAgent
from cityos.ingest.iot_mqtt import MqttTransport, share_group
from cityos.ingest.iot_provisioning import Registry
from cityos.ingest.sink import StoreSink
from cityos.jsonld.registry import ContextRegistry
from cityos.settings import Settings
from cityos.store.base import EntityQuery, EntityStore, IngestRecord

log = logging.getLogger("cityos.ingest")
# stored while `serve --demo-on-empty` loads the demo city (an ingest record of a kind of its own)
DEMO_MARK = IngestRecord("demo", "", "loading", {"what": "the demo city load has not finished"})


class IngestService:
    def __init__(self, store: EntityStore, contexts: ContextRegistry, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.sink = StoreSink(store, contexts.core_terms())
        self.agent = IotAgent(Registry(store), self.sink)
        self.mqtt = (
            MqttTransport(
                self.agent, settings.iot_mqtt_url, share_group(settings.iot_mqtt_share_group, settings.database)
            )
            if settings.iot_mqtt_url
            else None
        )

    def routes(self) -> list[Route]:
        return iot_http.routes() if self.settings.iot_http else []

    async def start(self) -> None:
        await self.agent.registry.load()
        if self.settings.demo_on_empty:
            await self.load_demo_if_empty()
        if self.mqtt is not None:
            self.mqtt.start()

    async def stop(self) -> None:
        if self.mqtt is not None:
            await self.mqtt.stop()

    async def load_demo_if_empty(self) -> bool:
        """Load the demo city into the default tenant if it has no entity; True if loaded.

        A mark is stored while the load runs: a load that was stopped half-way (Ctrl-C, a crash)
        left it behind, and the next start removes what that load wrote, then loads it again."""
        interrupted = bool(await self.store.load_ingest_records(DEMO_MARK.kind))
        if interrupted:
            log.info("the last demo city load was stopped half-way: removing what it wrote, then loading it again")
            await self._remove_partial_demo()
        elif (await self.store.query_entities("", EntityQuery(limit=1))).entities:
            return False
        from cityos.ingest import runs
        from cityos.ingest.demo import load_demo

        log.info("Loading the demo city (--demo-on-empty) ...")
        if not interrupted:
            await self.store.add_ingest_records([DEMO_MARK])
        record = runs.new_run("demo", "the demo city (--demo-on-empty)")
        await runs.save(self.sink, record)
        report = await load_demo(
            self.sink, history_sink=self.sink, progress=lambda step: log.info("Loading the demo city: %s", step)
        )
        await runs.save(self.sink, runs.demo_finished(record, report))
        await self.store.refresh_statistics()
        await self.store.delete_ingest_record(DEMO_MARK.kind, DEMO_MARK.tenant, DEMO_MARK.key)
        base = f"http://{self.settings.host}:{self.settings.port}"
        for line in report.lines(base):
            log.info("%s", line)
        return True

    async def _remove_partial_demo(self) -> None:
        """Undo a stopped demo load. It only ever starts on an empty default tenant, so whatever
        the tenant holds came from it: every entity goes, and the history of each of them and of
        every entity the demo writes (one it wrote may have been deleted since) with it."""
        from cityos.ingest.demo import entity_ids

        found = [entity["id"] for entity in (await self.store.query_entities("", EntityQuery())).entities]
        await self.store.mutate("", [(entity_id, update.delete(entity_id)) for entity_id in found], atomic=False)
        for entity_id in sorted({*found, *entity_ids()}):  # after the deletes: their deletion instances go too
            await self.store.temporal_delete_entity("", entity_id)
