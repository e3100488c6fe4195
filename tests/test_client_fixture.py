from starlette.testclient import TestClient


def test_in_process_client_uses_a_real_sqlite_file(client: TestClient, settings) -> None:  # type: ignore[no-untyped-def]
    response = client.post("/ngsi-ld/v1/entities", json={"id": "urn:ngsi-ld:T:1", "type": "T"})
    assert response.status_code == 201
    import sqlite3

    rows = sqlite3.connect(settings.database).execute("SELECT id FROM entities").fetchall()
    assert rows == [("urn:ngsi-ld:T:1",)]
