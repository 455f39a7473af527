"""Settings for Canary, read from the environment with defaults that run on a laptop.

With nothing set, Canary runs embedded: SQLite in WAL mode, kombu's filesystem broker and a
file-based cache under ``var/``. Production sets ``DATABASE_URL``, ``CELERY_BROKER_URL`` and
``REDIS_URL`` and runs the same code on PostgreSQL and Redis. ``.env.example`` lists every knob.
"""

from datetime import timedelta
from pathlib import Path

import environ
from csp import constants as csp

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(environ.Env().str("CANARY_VAR_DIR", default=str(BASE_DIR / "var")))
VAR_DIR.mkdir(parents=True, exist_ok=True)

env = environ.Env()
environ.Env.read_env(BASE_DIR / ".env", overwrite=False)

DEBUG = env.bool("DJANGO_DEBUG", default=False)
EMBEDDED = not env.str("DATABASE_URL", default="")


def _local_secret_key() -> str:
    # An embedded install keeps a generated key on disk so sessions survive a restart;
    # production must set DJANGO_SECRET_KEY (check --deploy would flag a weak default).
    path = VAR_DIR / "secret_key"
    if not path.exists():
        from django.core.management.utils import get_random_secret_key

        path.write_text(get_random_secret_key())
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = env.str("DJANGO_SECRET_KEY", default="") or _local_secret_key()
ALLOWED_HOSTS = env.list("DJANGO_ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env.list("DJANGO_CSRF_TRUSTED_ORIGINS", default=[])

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django_prometheus",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_htmx",
    "template_partials",
    "auditlog",
    "axes",
    "canary_site",
    "flags",
    "routing",
    "health",
    "deployments",
    "rollback",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "csp.middleware.CSPMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    "canary_site.middleware.AuditMiddleware",
    "canary_site.middleware.DatabaseUnavailableMiddleware",
    "axes.middleware.AxesMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "canary_site.urls"
WSGI_APPLICATION = "canary_site.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "canary_site.context_processors.navigation",
            ],
        },
    },
]

# --- Database -----------------------------------------------------------------------------
DATABASES = {
    "default": env.db_url("DATABASE_URL", default=f"sqlite:///{VAR_DIR / 'canary.sqlite3'}")
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # WAL lets the web, worker and beat processes read while one of them writes; IMMEDIATE
    # transactions and a busy timeout make concurrent writers queue instead of failing.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
    # Worker processes started by the tests must see the test database, so it lives in a file.
    DATABASES["default"]["TEST"] = {"NAME": str(VAR_DIR / "test.sqlite3")}
else:
    DATABASES["default"].setdefault("CONN_MAX_AGE", env.int("CANARY_DB_CONN_MAX_AGE", 60))
    DATABASES["default"]["CONN_HEALTH_CHECKS"] = True

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Cache --------------------------------------------------------------------------------
# The cache is shared by every process (snapshot version counters, rate limits, task counts),
# so the embedded default is a file cache, not a per-process memory cache.
REDIS_URL = env.str("REDIS_URL", default="")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": env.str("CANARY_CACHE_PREFIX", default="canary"),
            # Everything that uses the cache can do without it for a while (flags, routing
            # versions, rate limits); an unreachable Redis must cost a second, not a hung request.
            "OPTIONS": {
                "socket_connect_timeout": env.float("CANARY_CACHE_TIMEOUT_SECONDS", default=1.0),
                "socket_timeout": env.float("CANARY_CACHE_TIMEOUT_SECONDS", default=1.0),
            },
        }
    }
else:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": str(VAR_DIR / "cache"),
            "KEY_PREFIX": env.str("CANARY_CACHE_PREFIX", default="canary"),
        }
    }

# --- Auth ---------------------------------------------------------------------------------
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "canary_site:overview"
LOGOUT_REDIRECT_URL = "login"

# Login throttling: five failures for one username from one address lock it for a while.
AXES_FAILURE_LIMIT = env.int("CANARY_LOGIN_FAILURE_LIMIT", default=5)
AXES_COOLOFF_TIME = timedelta(minutes=env.int("CANARY_LOGIN_COOLOFF_MINUTES", default=15))
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_HTTP_RESPONSE_CODE = 429

# --- Audit trail --------------------------------------------------------------------------
AUDITLOG_LOGENTRY_MODEL = "canary_site.AuditEntry"
AUDITLOG_INCLUDE_ALL_MODELS = False
AUDITLOG_DISABLE_REMOTE_ADDR = False
# auditlog's migrations would create its own entry table even though ours replaces it; that
# orphan table would also block PostgreSQL from truncating content types between tests.
MIGRATION_MODULES = {"auditlog": None}

# --- I18N, static -------------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = env.str("CANARY_TIME_ZONE", default="UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(env.str("DJANGO_STATIC_ROOT", default=str(VAR_DIR / "staticfiles")))
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
STATICFILES_DIRS = [BASE_DIR / "static"]
STATICFILES_FINDERS = [
    "django.contrib.staticfiles.finders.FileSystemFinder",
    "django.contrib.staticfiles.finders.AppDirectoriesFinder",
    "canary_site.staticfinders.VendorFinder",
]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedStaticFilesStorage"},
}
# Serving straight from the finders means no collectstatic step for a laptop or a test run;
# production may still run collectstatic and set this off.
WHITENOISE_USE_FINDERS = env.bool("CANARY_STATIC_FROM_FINDERS", default=True)

# --- Security -----------------------------------------------------------------------------
# Behind TLS (production), everything that check --deploy asks for is on.
HTTPS = env.bool("CANARY_HTTPS", default=False)
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SECURE_SSL_REDIRECT = HTTPS and env.bool("CANARY_SSL_REDIRECT", default=True)
SECURE_HSTS_SECONDS = env.int("CANARY_HSTS_SECONDS", default=31536000) if HTTPS else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = HTTPS
SECURE_HSTS_PRELOAD = HTTPS
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if HTTPS else None
SECURE_REDIRECT_EXEMPT = [r"^healthz$", r"^readyz$", r"^metrics$"]
SESSION_COOKIE_HTTPONLY = True
X_FRAME_OPTIONS = "DENY"
CSRF_FAILURE_VIEW = "canary_site.views.csrf_failure"
# Content-Security-Policy on every response (django-csp). Scripts and styles come only from our own
# static files: no page has an inline script, handler or style attribute, and the one inline
# <style> (plotly.js's, in base.html) carries the request's nonce. No eval: htmx runs with
# allowEval off and plotly.js draws our charts without it. data: and blob: images are how
# plotly.js exports a chart as PNG; an image cannot run code.
CONTENT_SECURITY_POLICY = {
    "DIRECTIVES": {
        "default-src": [csp.SELF],
        "script-src": [csp.SELF],
        "style-src": [csp.SELF, csp.NONCE],
        "img-src": [csp.SELF, "data:", "blob:"],
        "object-src": [csp.NONE],
        "base-uri": [csp.SELF],
        "form-action": [csp.SELF],
        "frame-ancestors": [csp.NONE],
    }
}

# --- REST API -----------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "canary_site.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["canary_site.roles.HasRolePermissions"],
    "DEFAULT_FILTER_BACKENDS": [
        "django_filters.rest_framework.DjangoFilterBackend",
        "rest_framework.filters.SearchFilter",
        "rest_framework.filters.OrderingFilter",
    ],
    "DEFAULT_PAGINATION_CLASS": "canary_site.api.pagination.Pagination",
    "PAGE_SIZE": 50,
    "DEFAULT_SCHEMA_CLASS": "canary_site.schema.AutoSchema",
    "EXCEPTION_HANDLER": "canary_site.exceptions.api_exception_handler",
    "DEFAULT_RENDERER_CLASSES": [
        "rest_framework.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Canary API",
    "DESCRIPTION": "Progressive delivery: deployments, feature flags, routing, health, rollback.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "COMPONENT_SPLIT_REQUEST": True,
    "PREPROCESSING_HOOKS": ["canary_site.schema.one_spelling_per_route"],
}

# --- Celery -------------------------------------------------------------------------------
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="") or "filesystem://"
if CELERY_BROKER_URL == "filesystem://":
    _broker_dir = VAR_DIR / "broker"
    (_broker_dir / "processed").mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir),
        "data_folder_out": str(_broker_dir),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
# Queues per subsystem come later; one named queue lets a test run its own isolated workers.
CELERY_TASK_DEFAULT_QUEUE = env.str("CANARY_TASK_QUEUE", default="celery")
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_ALWAYS_EAGER = env.bool("CANARY_TASKS_EAGER", default=False)
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")

CANARY_TICK_SECONDS = env.float("CANARY_TICK_SECONDS", default=5.0)
# Beat. With Redis any number of beats may run: they share the schedule and a lock there, so
# exactly one ticks, and another takes over once a dead one's lock lapses (docs/architecture.md,
# "Two beats"). The holder renews it at least three times per lock period. Without Redis (the
# embedded default) the one beat keeps its schedule in a file. Either way the schedule is
# CELERY_BEAT_SCHEDULE below, which every beat writes into Redis when it starts.
CANARY_BEAT_LOCK_SECONDS = env.int(
    "CANARY_BEAT_LOCK_SECONDS", default=max(2, round(3 * CANARY_TICK_SECONDS))
)
_beat_redis_url = REDIS_URL or (
    CELERY_BROKER_URL if CELERY_BROKER_URL.startswith(("redis://", "rediss://")) else ""
)
if _beat_redis_url:
    CELERY_BEAT_SCHEDULER = "canary_site.redis_beat:RedisBeatScheduler"
    CELERY_REDBEAT_REDIS_URL = _beat_redis_url
    # An unreachable Redis fails the beat's tick (and a supervisor restarts it) instead of
    # hanging it past its lock.
    CELERY_REDBEAT_REDIS_OPTIONS = {"socket_timeout": 5.0, "socket_connect_timeout": 5.0}
    CELERY_REDBEAT_KEY_PREFIX = f"{CACHES['default']['KEY_PREFIX']}:beat:"
    CELERY_REDBEAT_LOCK_KEY = f"{CELERY_REDBEAT_KEY_PREFIX}:lock"
    CELERY_REDBEAT_LOCK_TIMEOUT = CANARY_BEAT_LOCK_SECONDS
    # Also how often a waiting beat tries the lock.
    CELERY_BEAT_MAX_LOOP_INTERVAL = min(CANARY_TICK_SECONDS, CANARY_BEAT_LOCK_SECONDS / 3)
else:
    CELERY_BEAT_SCHEDULER = "canary_site.celery:FileBeatScheduler"

# The control loop's clock. Each subsystem adds its own step here; every step is idempotent.
_tick = {"schedule": CANARY_TICK_SECONDS, "options": {"expires": CANARY_TICK_SECONDS}}
CELERY_BEAT_SCHEDULE = {
    "control-heartbeat": {"task": "canary_site.tasks.heartbeat_record", **_tick},
    # routing: active health checks of targets (step 1 of the loop)
    "routing-probe-targets": {"task": "routing.tasks.targets_probe_due", **_tick},
    # routing: external data planes (HAProxy, nginx) get their weights, drift is repaired and
    # their counters feed the metric store
    "routing-providers-sync": {"task": "routing.tasks.providers_sync", **_tick},
    # health: metric pulls, alerts and notifications (step 2); evaluations run in the
    # deployments tick, which alone knows which canaries are running.
    "health-prometheus-pull": {
        "task": "health.tasks.prometheus_pull",
        "schedule": env.float("CANARY_PROMETHEUS_PULL_SECONDS", default=30.0),
    },
    "health-alerts-escalate": {"task": "health.tasks.alerts_escalate", **_tick},
    "health-notifications": {"task": "health.tasks.notifications_deliver_due", **_tick},
    "health-metrics-compact": {"task": "health.tasks.metrics_compact", "schedule": 300.0},
    # flags: exposure counts past their retention
    "flags-exposures-prune": {"task": "flags.tasks.flag_exposures_prune", "schedule": 86400.0},
    # deployments: the orchestration tick, which also asks health to judge each canary (step 3)
    "deployments-tick": {"task": "deployments.tasks.deployments_tick", **_tick},
    # rollback: executions, kill switch triggers and recoveries (step 4)
    "rollback-approvals-expire": {"task": "rollback.tasks.approval_requests_expire", **_tick},
    "rollback-executions-advance": {"task": "rollback.tasks.rollback_executions_advance", **_tick},
    "rollback-kill-switches-watch": {"task": "rollback.tasks.kill_switches_watch", **_tick},
    "rollback-plan-triggers": {"task": "rollback.tasks.plan_triggers_check", **_tick},
}

# --- Canary's own knobs -------------------------------------------------------------------
CANARY_ADMIN_USERNAME = env.str("CANARY_ADMIN_USERNAME", default="admin")
# /metrics is public unless this is set; then a scrape must send ``Authorization: Bearer <it>``.
CANARY_METRICS_TOKEN = env.str("CANARY_METRICS_TOKEN", default="")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": env.str("CANARY_LOG_LEVEL", default="INFO")},
    "loggers": {"axes": {"level": "WARNING"}},
}
