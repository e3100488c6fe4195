from starlette.testclient import TestClient

from backends import db_rows
from cityos.settings import Settings


def test_in_process_client_uses_a_real_database(client: TestClient, settings: Settings) -> None:
    response = client.post("/ngsi-ld/v1/entities", json={"id": "urn:ngsi-ld:T:1", "type": "T"})
    assert response.status_code == 201
    assert db_rows(settings.database, "SELECT id FROM entities") == [("urn:ngsi-ld:T:1",)]
