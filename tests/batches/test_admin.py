"""The Django admin shows files, batches and items, and changes none of them."""

from __future__ import annotations

from datetime import timedelta

from django.utils import timezone

from batches.models import Batch, BatchItem, File


def test_the_admin_lists_and_shows_batches_read_only(world, admin_client):
    file = File.objects.create(
        org=world.org_a,
        filename="in.jsonl",
        purpose="batch",
        bytes=10,
        storage_name="x",
        content_type="application/jsonl",
    )
    batch = Batch.objects.create(
        org=world.org_a,
        api_key=world.bob.key,
        input_file=file,
        endpoint="/v1/chat/completions",
        expires_at=timezone.now() + timedelta(hours=1),
        worker_id="elsewhere",
        heartbeat_at=timezone.now() + timedelta(hours=1),
    )
    item = BatchItem.objects.create(batch=batch, line=1, custom_id="<script>x</script>", body={})
    for name, obj in (("file", file), ("batch", batch), ("batchitem", item)):
        listing = admin_client.get(f"/admin/batches/{name}/")
        assert listing.status_code == 200
        page = admin_client.get(f"/admin/batches/{name}/{obj.pk}/change/")
        assert page.status_code == 200
        assert b"<script>x</script>" not in page.content
        assert admin_client.get(f"/admin/batches/{name}/add/").status_code == 403
    before = Batch.objects.values_list("status", flat=True).get()
    admin_client.post(f"/admin/batches/batch/{batch.pk}/change/", {"status": "completed"})
    assert Batch.objects.values_list("status", flat=True).get() == before
