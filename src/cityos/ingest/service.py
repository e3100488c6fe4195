"""What `cityos serve` runs for ingestion: the IoT Agent (HTTP routes, MQTT subscriber) and the
demo city loaded into an empty database. create_app builds one IngestService and starts it after
the store and the subscription matcher, so ingested changes are notified like any other."""

from __future__ import annotations

import logging

from starlette.routing import Route

from cityos.ingest import iot_http
from cityos.ingest.iot_agent import IotAgent
from cityos.ingest.iot_mqtt import MqttTransport, share_group
from cityos.ingest.iot_provisioning import Registry
from cityos.ingest.sink import StoreSink
from cityos.jsonld.registry import ContextRegistry
from cityos.settings import Settings
from cityos.store.base import EntityQuery, EntityStore

log = logging.getLogger("cityos.ingest")


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
        """Load the demo city into the default tenant if it has no entity; True if loaded."""
        if (await self.store.query_entities("", EntityQuery(limit=1))).entities:
            return False
        from cityos.ingest.demo import load_demo

        report = await load_demo(self.sink, history_sink=self.sink)
        await self.store.refresh_statistics()
        base = f"http://{self.settings.host}:{self.settings.port}"
        for line in report.lines(base):
            log.warning("%s", line)  # shown at the default log level, like uvicorn's own start-up lines
        return True
