"""Django settings for the django-pyas2 test peer (run only inside the django-pyas2 venv).

Everything the peer writes lives in ``$PEER_WORKDIR``: the SQLite database, MEDIA_ROOT (django-pyas2
keeps messages, MDNs and inboxes there) and peer.log. ``PYAS2['DATA_DIR']`` is deliberately NOT set:
with an absolute DATA_DIR every inbound message fails with HTTP 400 (Django's SuspiciousFileOperation
path-traversal check, CVE-2021-31542), so django-pyas2 stores under MEDIA_ROOT instead.
The async-MDN URL comes from ``server.json``, written by ``django_pyas2_peer.py serve``.
"""

import json
import os
from pathlib import Path

WORKDIR = Path(os.environ["PEER_WORKDIR"]).resolve()
_server = json.loads((WORKDIR / "server.json").read_text()) if (WORKDIR / "server.json").exists() else {}

SECRET_KEY = "django-pyas2 test peer; not a secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
USE_TZ = True
TIME_ZONE = "UTC"

INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "pyas2"]
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
ROOT_URLCONF = "peersite.urls"
WSGI_APPLICATION = "peersite.wsgi.application"
DATA_UPLOAD_MAX_MEMORY_SIZE = None

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": WORKDIR / "db.sqlite3",
        "OPTIONS": {"timeout": 30, "init_command": "PRAGMA journal_mode=WAL;"},
    }
}
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"

MEDIA_ROOT = str(WORKDIR / "media")
PYAS2 = {
    "MDN_URL": _server.get("mdn_url", "http://127.0.0.1:9/pyas2/as2receive"),
    "ASYNC_MDN_WAIT": 30,
    "MAX_RETRIES": 1,
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(process)d %(name)s %(levelname)s %(message)s"}},
    "handlers": {"file": {"class": "logging.FileHandler", "filename": WORKDIR / "peer.log", "formatter": "plain"}},
    "loggers": {
        "pyas2": {"handlers": ["file"], "level": "INFO"},
        "pyas2lib": {"handlers": ["file"], "level": "INFO"},
        "django.request": {"handlers": ["file"], "level": "INFO"},
    },
}
