"""gunicorn settings for the django-pyas2 test peer.

The listening socket is bound by django_pyas2_peer.py and handed over as ``--bind fd://N``; the port
file is written only once a worker has loaded Django, so "port file exists" means "ready".
"""

import os

wsgi_app = "peersite.wsgi:application"
worker_class = "gthread"
workers = 1
threads = 8
timeout = 120
graceful_timeout = 5
accesslog = "-"
errorlog = "-"
loglevel = "info"
control_socket_disable = True  # gunicorn 27 would otherwise share ~/.gunicorn/gunicorn.ctl between peers


def post_worker_init(worker):
    port_file = os.environ.get("PEER_PORT_FILE")
    if port_file:
        tmp = port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(os.environ["PEER_PORT"] + "\n")
        os.replace(tmp, port_file)
