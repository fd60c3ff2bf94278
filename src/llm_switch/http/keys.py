"""The application's shared resources, under typed keys."""

from aiohttp import web

from ..config import Config
from ..observe.prometheus import Metrics
from ..scheduling.scheduler import Scheduler
from .inflight import InFlight

CONFIG = web.AppKey("config", Config)  # the config the app was built with (listen, body limit)
SCHEDULER = web.AppKey("scheduler", Scheduler)
INFLIGHT = web.AppKey("inflight", InFlight)
METRICS = web.AppKey("metrics", Metrics)
