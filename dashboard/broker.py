"""The embedded Celery broker of ``make run``: kombu's filesystem transport, with atomic publish.

kombu writes each message file in place under its final name, so a worker that lists the folder
while a publisher is still writing can take a half-written file and fail to decode it. Here a
message is written under a name the consumer ignores and then renamed into place (atomic on
one filesystem): a consumer sees a whole message or none. Production brokers (Redis, RabbitMQ) do not use this.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from time import monotonic
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.encoding import str_to_bytes
from kombu.utils.json import dumps


class Channel(filesystem.Channel):
    def _put(self, queue: str, payload: Any, **kwargs: Any) -> None:
        """Put `payload` onto `queue`: write a temporary file, then rename it into place."""
        name = f"{round(monotonic() * 1000)}_{uuid.uuid4()}.{queue}.msg"
        final = os.path.join(self.data_folder_out, name)
        # The consumer takes only files named "<stamp>_<uuid>.<queue>.msg"; this one is not.
        partial = os.path.join(self.data_folder_out, f"~{uuid.uuid4().hex}.partial")
        try:
            with open(partial, "wb") as f:
                f.write(str_to_bytes(dumps(payload)))
            os.replace(partial, final)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(partial)
            raise ChannelError(f"Cannot add file {final!r} to directory") from exc


class Transport(filesystem.Transport):
    Channel = Channel
