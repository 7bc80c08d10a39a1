"""``shelftally cameras``: the camera registry (RTSP streams, snapshot URLs, watched folders) and polls.

With a broker configured, ``cameras poll`` enqueues the polls for the workers; without one, each
poll runs here and pictures worth it are scanned in-process.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from workers.cli._common import JsonOption, get_context, handle_broker_errors, run_in_db
from workers.console import console, print_json

__all__ = ["camera_table", "cameras_app"]

cameras_app = typer.Typer(no_args_is_help=True, help="The camera registry: RTSP streams, snapshot URLs, folders.")


@cameras_app.command("add")
def cameras_add(
    typer_ctx: typer.Context,
    camera_code: Annotated[str, typer.Argument(help="Unique camera name.")],
    kind: Annotated[str, typer.Option("--kind", help="rtsp, http or folder.")],
    url: Annotated[str, typer.Option("--url", help="Stream URL, snapshot URL or folder path; no password in it.")],
    location: Annotated[str | None, typer.Option(
        "--location", help="Location it shows; omit it to read location labels in each picture.",
    )] = None,
    interval: Annotated[float, typer.Option("--interval", min=0.1, help="Seconds between polls.")] = 60.0,
    timeout: Annotated[float, typer.Option("--timeout", min=0.1, help="Limit of one grab, seconds.")] = 10.0,
    stale_after: Annotated[float, typer.Option(
        "--stale-after", min=1, help="Identical frames for this long: a frozen feed (STALE).",
    )] = 300.0,
    secret: Annotated[str | None, typer.Option(
        "--secret", help="Where the password is: env:NAME or file:/path (never the password itself).",
    )] = None,
    as_json: JsonOption = False,
) -> None:
    """Register a camera."""
    from inventory.models import CameraKind
    from workers.cameras.registry import add_camera, list_cameras

    try:
        camera_kind = CameraKind(kind)
    except ValueError as error:
        raise typer.BadParameter("rtsp, http or folder", param_hint="--kind") from error

    def work(session: Any) -> dict[str, Any]:
        add_camera(session, camera_code=camera_code, kind=camera_kind, url=url, location_code=location,
                   interval_s=interval, timeout_s=timeout, stale_after_s=stale_after, secret_ref=secret)
        session.flush()
        return next(row for row in list_cameras(session) if row["camera_code"] == camera_code)

    row = run_in_db(typer_ctx, work, as_json)
    if as_json:
        print_json(row)
    else:
        console.print(f"camera {row['camera_code']} ({row['kind']}) {row['url']} added", highlight=False)


@cameras_app.command("list")
def cameras_list(typer_ctx: typer.Context, as_json: JsonOption = False) -> None:
    """List cameras with their state (URLs masked, secrets never shown)."""
    from workers.cameras.registry import list_cameras

    rows = run_in_db(typer_ctx, list_cameras, as_json)
    if as_json:
        print_json({"cameras": rows})
        return
    console.print(camera_table(rows))


@cameras_app.command("remove")
def cameras_remove(
    typer_ctx: typer.Context, camera_code: Annotated[str, typer.Argument(help="Camera name.")],
) -> None:
    """Remove a camera from the registry (its scans stay)."""
    from workers.cameras.registry import remove_camera

    run_in_db(typer_ctx, lambda session: remove_camera(session, camera_code))
    console.print(f"camera {camera_code} removed", highlight=False)


@cameras_app.command("poll")
def cameras_poll(
    typer_ctx: typer.Context,
    camera_codes: Annotated[list[str] | None, typer.Argument(help="Cameras to poll now (default: those due).")] = None,
    forever: Annotated[bool, typer.Option("--forever", help="Keep polling cameras as they fall due.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Poll cameras now. With a broker, polls are enqueued for the workers; without one, each
    poll runs here and pictures worth it are scanned in-process."""
    import time
    from dataclasses import asdict
    from datetime import UTC, datetime

    from inventory.db import run_in_transaction
    from workers.cameras.registry import CameraPoller, due_cameras

    ctx = get_context(typer_ctx)
    settings = ctx.settings
    reports: list[dict[str, Any]] = []
    with handle_broker_errors(as_json):
        factory = ctx.factory
        if settings.broker_url:
            from workers.fleet.app import configure
            from workers.fleet.tasks import poll_camera

            configure(settings, serves_vision=False)
        else:
            from workers.scan.run import build_pipeline

            pipeline = build_pipeline(settings, factory)

            def scan_here(data: bytes, **kwargs: Any) -> None:
                kwargs.pop("camera_code", None)
                pipeline.scan(data, **kwargs)

            poller = CameraPoller(factory, scan_here)
        try:
            while True:
                codes = list(camera_codes or []) or run_in_transaction(
                    factory, lambda session: due_cameras(session, datetime.now(UTC)))
                for code in codes:
                    if settings.broker_url:
                        poll_camera.apply_async(args=[code])
                        reports.append({"camera_code": code, "enqueued": True})
                    else:
                        reports.append(asdict(poller.poll(code)))
                    if forever and not as_json:
                        console.print(" ".join(f"{k}={v}" for k, v in reports[-1].items()), highlight=False)
                if not forever:
                    break
                time.sleep(1.0)
        except KeyboardInterrupt:
            pass
        finally:
            from workers.cameras.registry import close_readers

            close_readers()  # stream threads are stopped before the interpreter exits
    if as_json:
        print_json({"polls": reports})
    elif not forever:
        for report in reports:
            console.print(" ".join(f"{k}={v}" for k, v in report.items()), highlight=False)


def camera_table(rows: list[dict[str, Any]]) -> Table:
    """A table of :func:`workers.cameras.registry.list_cameras` rows, the state in colour."""
    table = Table("camera", "kind", "url", "location", "state", "since", "last error", title=f"{len(rows)} camera(s)")
    colours = {"online": "green", "offline": "red", "stale": "yellow"}
    for row in rows:
        table.add_row(row["camera_code"], row["kind"], row["url"], row["location_code"] or "(label)",
                      f"[{colours[row['state']]}]{row['state']}[/]", row["state_since"][:19], row["last_error"] or "")
    return table
