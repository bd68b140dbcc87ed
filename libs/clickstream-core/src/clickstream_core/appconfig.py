"""The one app configuration (ingestion-contract.md §6), read by the proxy, the ETL and the loader.

```yaml
project_id: shop_project
apps:
  - app_id: shop
    timezone: Asia/Shanghai          # IANA name, default UTC
    allowed_origins:                 # exact origins or *.example.com wildcards
      - https://shop.example.com
      - "*.example.com"
```

No file means dev mode: every app id is accepted (`AppConfig.open_to_all`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

APP_ID_PATTERN = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,126}$")
PROJECT_ID_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,126}$")
DEFAULT_PROJECT_ID = "default"


class AppConfigError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class App:
    app_id: str
    timezone: str = "UTC"
    allowed_origins: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class AppConfig:
    project_id: str = DEFAULT_PROJECT_ID
    apps: dict[str, App] = field(default_factory=dict)
    open_to_all: bool = True  # dev mode: no file, any app id

    def is_registered(self, app_id: str) -> bool:
        return self.open_to_all or app_id in self.apps

    @classmethod
    def from_mapping(cls, data: object, source: str = "app config") -> AppConfig:
        problems: list[str] = []
        if not isinstance(data, dict):
            raise AppConfigError(f"{source}: expected a mapping with project_id and apps")
        project_id = data.get("project_id", DEFAULT_PROJECT_ID)
        if not isinstance(project_id, str) or not PROJECT_ID_PATTERN.match(project_id):
            problems.append(f"{source}: project_id {project_id!r} must match {PROJECT_ID_PATTERN.pattern}")
        raw_apps = data.get("apps") or []
        if not isinstance(raw_apps, list):
            problems.append(f"{source}: apps must be a list")
            raw_apps = []
        apps: dict[str, App] = {}
        for index, entry in enumerate(raw_apps):
            where = f"{source}: apps[{index}]"
            if not isinstance(entry, dict):
                problems.append(f"{where} must be a mapping")
                continue
            app_id = entry.get("app_id")
            if not isinstance(app_id, str) or not APP_ID_PATTERN.match(app_id):
                problems.append(f"{where}.app_id {app_id!r} must match {APP_ID_PATTERN.pattern}")
                continue
            if app_id in apps:
                problems.append(f"{where}.app_id {app_id!r} is registered twice")
                continue
            timezone = entry.get("timezone", "UTC")
            try:
                ZoneInfo(str(timezone))
            except (ZoneInfoNotFoundError, ValueError):
                problems.append(f"{where}.timezone {timezone!r} is not an IANA time zone")
                continue
            origins = entry.get("allowed_origins") or []
            if isinstance(origins, str):
                origins = [origins]
            if not isinstance(origins, list) or not all(isinstance(o, str) for o in origins):
                problems.append(f"{where}.allowed_origins must be a list of origins")
                continue
            apps[app_id] = App(app_id, str(timezone), tuple(o.strip() for o in origins if o.strip()))
        if problems:
            raise AppConfigError("\n".join(problems))
        return cls(project_id=project_id, apps=apps, open_to_all=False)

    @classmethod
    def load(cls, path: str | Path | None) -> AppConfig:
        if not path:
            return cls()
        file = Path(path)
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as exc:
            raise AppConfigError(f"cannot read app config {file}: {exc.strerror}") from None
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise AppConfigError(f"app config {file} is not valid YAML: {exc}") from None
        return cls.from_mapping(data, str(file))
