"""Installing the asyncio reactor, before anything imports ``twisted.internet.reactor``.

asyncssh (the SFTP door and push) runs on the asyncio loop Twisted's asyncio reactor drives; with any
other reactor its coroutines would never run. Modules such as ``twisted.mail.smtp`` import the global
reactor when they are imported, which installs the default one, so :func:`install_reactor` must run
first — ``postroom serve`` calls it before importing the gateway — and it refuses a wrong reactor
loudly rather than letting the SFTP door hang.
"""

import asyncio
import sys


def install_reactor():
    """Install Twisted's asyncio reactor on a fresh loop (once), and return the reactor.

    :raises RuntimeError: another reactor was installed already.
    """
    if "twisted.internet.reactor" not in sys.modules:
        from twisted.internet import asyncioreactor

        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        asyncioreactor.install(loop)
    from twisted.internet import reactor
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor

    if not isinstance(reactor, AsyncioSelectorReactor):
        raise RuntimeError(f"{type(reactor).__name__} was installed before the asyncio reactor: something imported "
                           "twisted.internet.reactor before gateway.reactor.install_reactor() ran")
    return reactor
