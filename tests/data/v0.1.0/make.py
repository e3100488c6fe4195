"""How v0.1.0/cityos.db was made, with CityOS at commit bde8196 (to be tagged v0.1.0; schema version 5):

    git worktree add --detach /tmp/old bde8196 && export PYTHONPATH=/tmp/old/src
    python -m cityos keys create --name admin --role admin --database old.db > token
    python -m cityos serve --port 28001 --database old.db --auth required &   # then: python make.py
    kill %1    # the server signs a closing audit checkpoint
    python -m cityos audit pubkey --database old.db > audit.pub
    sqlite3 old.db "VACUUM INTO 'cityos.db'"

Five weather stations with a day of hourly history (numbers, and long texts kept in temporal_values),
three car parks (one deleted), a subscription, an access policy, the admin key and the audit trail.
tests/test_db_upgrade.py upgrades a copy. Never make it again with newer code.
"""

from pathlib import Path

import httpx

token = Path("token").read_text().strip()
h = {"Authorization": f"Bearer {token}"}
with httpx.Client(base_url="http://127.0.0.1:28001", headers=h, timeout=30) as c:
    for n in range(5):
        r = c.post(
            "/ngsi-ld/v1/entities",
            json={
                "id": f"urn:ngsi-ld:WeatherObserved:w{n}",
                "type": "WeatherObserved",
                "temperature": {
                    "type": "Property",
                    "value": 10 + n,
                    "unitCode": "CEL",
                    "observedAt": "2026-01-01T00:00:00Z",
                },
                "location": {
                    "type": "GeoProperty",
                    "value": {"type": "Point", "coordinates": [-116.76 + n / 100, 36.9]},
                },
                "name": {"type": "Property", "value": f"Station {n}"},
            },
        )
        assert r.status_code == 201, r.text
        for hour in range(1, 24):
            r = c.patch(
                f"/ngsi-ld/v1/entities/urn:ngsi-ld:WeatherObserved:w{n}/attrs",
                json={
                    "temperature": {
                        "type": "Property",
                        "value": 10 + n + hour / 10,
                        "unitCode": "CEL",
                        "observedAt": f"2026-01-01T{hour:02d}:00:00Z",
                    },
                    "description": {
                        "type": "Property",
                        "value": "a long text value " * 8 + str(hour),
                        "observedAt": f"2026-01-01T{hour:02d}:00:00Z",
                    },
                },
            )
            assert r.status_code == 204, r.text
    for n in range(3):
        r = c.post(
            "/ngsi-ld/v1/entities",
            json={
                "id": f"urn:ngsi-ld:OffStreetParking:p{n}",
                "type": "OffStreetParking",
                "availableSpotNumber": {"type": "Property", "value": 40 + n},
                "refWeather": {"type": "Relationship", "object": "urn:ngsi-ld:WeatherObserved:w0"},
                "location": {
                    "type": "GeoProperty",
                    "value": {"type": "Point", "coordinates": [-116.75, 36.91 + n / 100]},
                },
            },
        )
        assert r.status_code == 201, r.text
    r = c.delete("/ngsi-ld/v1/entities/urn:ngsi-ld:OffStreetParking:p2")
    assert r.status_code == 204, r.text
    r = c.post(
        "/ngsi-ld/v1/subscriptions",
        json={
            "id": "urn:ngsi-ld:Subscription:cold",
            "type": "Subscription",
            "entities": [{"type": "WeatherObserved"}],
            "q": "temperature<0",
            "notification": {"endpoint": {"uri": "https://notify.example.org/cold", "accept": "application/json"}},
        },
    )
    assert r.status_code == 201, r.text
    r = c.post(
        "/cityos/v1/admin/policies",
        json={
            "id": "public-reads-weather",
            "effect": "allow",
            "principals": {"anonymous": True, "authenticated": True},
            "actions": ["read"],
            "resources": {"types": ["WeatherObserved"]},
        },
    )
    assert r.status_code == 201, r.text
print("loaded")
