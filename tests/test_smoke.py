from tests.support import submit, wait_terminal


async def test_seed_example(client):
    body = await submit(
        client,
        "update_orders_status",
        [{"id": "ord_123", "status": "cancelled"}, {"id": "ord_124", "status": "shipped"}],
    )
    job = await wait_terminal(client, body["id"])
    assert job.succeeded == 2
