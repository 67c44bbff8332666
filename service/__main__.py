"""`python -m service` (and the `lossd` command): read the settings from the environment and serve (see
`service.server`). A setting the service cannot use stops it here, with one line per variable and no traceback."""

from __future__ import annotations

import sys

from pydantic import ValidationError

from service.compute import resolve_device
from service.config import Settings
from service.errors import SettingError
from service.server import serve


def main() -> None:
    try:
        settings = Settings()
        resolve_device(settings.device)
        settings.read_api_keys()
    except ValidationError as exc:
        for error in exc.errors():
            name = "LOSSD_" + "_".join(str(part) for part in error["loc"]).upper() if error["loc"] else "settings"
            sys.stderr.write(f"lossd: invalid {name}: {error['msg']}\n")
        raise SystemExit(2) from None
    except SettingError as exc:
        sys.stderr.write(f"lossd: invalid {exc.variable}: {exc.message}\n")
        raise SystemExit(2) from None
    serve(settings)


if __name__ == "__main__":
    main()
