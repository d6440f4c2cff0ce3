"""The HTTP API and browser page: classify an uploaded image with a served run, with Grad-CAM.

Models load once, at start-up, from the run folders named on the command line; requests name
a run only by its served name, so no request can make the server open another path. What
requests may hold is bounded (`limits`): decoded images share one byte budget
(`images.DecodeBudget`), so a burst of decompression-heavy uploads waits or gets 429 rather
than filling memory.

    cifarlab serve runs/baseline runs/batchnorm --host 127.0.0.1 --port 8000

    POST /api/predict   multipart `image`, optional `run` and `top_k` → top classes + heat map
    GET  /api/runs      the served runs with their metrics
    GET  /              the page;  GET /docs  the OpenAPI documentation (Swagger UI 5, served
                        from here: it reads the OpenAPI 3.1 schema that FastAPI writes)
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures, and `top_k`'s
# bound is a local variable that string annotations could not resolve.
import base64
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, BinaryIO
from urllib.parse import quote

import numpy as np
from fastapi import FastAPI, File, Form, HTTPException, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline
from pydantic import BaseModel

from cifarlab import prediction, run_folder
from cifarlab.data import images
from cifarlab.errors import UserError
from cifarlab.serve import limits

MAX_UPLOAD_BYTES = 10 * 1024 * 1024  # Largest accepted image file: 10 MB.
_MULTIPART_OVERHEAD = 64 * 1024  # Room for form boundaries and the small text fields.
# Requests in progress at once; the next gets 429. Below the 64 connections uvicorn admits
# (`limits.MAX_CONNECTIONS`), so a client hears 429 rather than 503. Requests beyond anyio's 40
# worker threads wait for one with their upload spooled (beyond 1 MB, to disk), and all the
# decodes share `images.DECODE_BUDGET_BYTES`: memory does not grow with this number.
MAX_REQUESTS = 48
DECODE_WAIT_SECONDS = 30  # A decode that cannot start within this gets 429.
STATIC = Path(__file__).parent / "static"
FAVICON = STATIC / "favicon.svg"  # Linked by the page and /docs, and served at /favicon.ico.


@dataclass
class ServedRun:
    """One run being served: its classifier, Grad-CAM (None for an ONNX export, which has no
    gradients to give), and a lock so requests take turns."""

    classifier: prediction.Classifier
    explainer: object | None  # A `grad_cam.GradCam`; that module loads Keras.
    source: str = ""  # The run folder or model file as the command line named it.
    lock: threading.Lock = field(default_factory=threading.Lock)


class Error(BaseModel):
    detail: str


class ClassProbability(BaseModel):
    class_name: str
    probability: float


class PredictResponse(BaseModel):
    run: str
    predictions: list[ClassProbability]
    explained_class: str
    # Base64 PNG: the model's input enlarged, with the Grad-CAM map over it; None for an ONNX
    # export, which Grad-CAM cannot explain.
    heatmap_png: str | None


class RunInfo(BaseModel):
    name: str
    experiment: str | None
    class_names: list[str]
    image_size: int
    accuracy: dict[str, float]  # Per split ("train", "val", "test") where the run has it.
    verdict: str | None
    curves_url: str | None
    damaged: str | None  # Why the run's metrics are not shown, when its metrics file is damaged.
    source: str  # The run folder or model file as `serve` was given it: which run is which.


_ERRORS = {
    code: {"model": Error, "description": description}
    for code, description in (
        (400, "Not an image, a truncated image or an empty file"),
        (404, "Unknown run"),
        (408, "The upload stalled or arrived too slowly"),
        (413, "Upload over 10 MB, or an image over the pixel or decoded-memory limit"),
        (422, "Missing or invalid form field"),
        (429, "Too many requests or large images at once; try again in a moment"),
    )
}


def load_runs(run_dirs: list[str | Path]) -> dict[str, ServedRun]:
    """Each run folder's classifier under a unique name (the folder's name), warmed up."""
    if not run_dirs:
        raise UserError("Name at least one run folder to serve.")
    runs: dict[str, ServedRun] = {}
    for run_dir in run_dirs:
        classifier = prediction.load_classifier(run_dir)
        name, counter = classifier.name, 2
        while name in runs:
            name, counter = f"{classifier.name}-{counter}", counter + 1
        blank = np.zeros((1, classifier.image_size, classifier.image_size, 3), np.uint8)
        explainer = None
        if classifier.explainable:
            from cifarlab import grad_cam

            explainer = grad_cam.GradCam(classifier.model)
            explainer(blank)  # One call now, so the first user does not wait for graph tracing.
        else:
            classifier.probabilities(blank)
        runs[name] = ServedRun(classifier, explainer, str(run_dir))
    return runs


def create_app(run_dirs: list[str | Path]) -> FastAPI:
    """The FastAPI application serving `run_dirs`; their models load here, once."""
    runs = load_runs(run_dirs)
    budget = images.DecodeBudget(images.DECODE_BUDGET_BYTES, DECODE_WAIT_SECONDS)
    max_classes = max(len(served.classifier.class_names) for served in runs.values())
    # /docs loads Swagger UI 5 from this server, not from a CDN, so it works offline. Swagger
    # UI 4 (swagger-ui-bundle 1.1) cannot render the OpenAPI 3.1 schema that FastAPI writes.
    app = FastAPIOffline(
        title="cifarlab",
        summary="Classify images with trained cifarlab runs.",
        redoc_url=None,
        static_url="/docs-assets",
        favicon_url=f"/static/{FAVICON.name}",
    )

    app.add_middleware(
        limits.BodyLimit,
        max_bytes=MAX_UPLOAD_BYTES + _MULTIPART_OVERHEAD,
        message="The upload is larger than the 10 MB limit.",
    )
    app.add_middleware(limits.RequestLimit, max_requests=MAX_REQUESTS)  # Outermost: first.
    app.add_exception_handler(RequestValidationError, _validation_error)

    @app.get("/api/runs", response_model=list[RunInfo])
    def list_runs() -> list[RunInfo]:
        """The served runs, their class names and accuracies, and the verdict if there is one."""
        return [run_info(name, served) for name, served in runs.items()]

    @app.get(
        f"/api/runs/{{name}}/{run_folder.CURVES}",
        response_class=FileResponse,
        responses={404: _ERRORS[404]},
    )
    def learning_curves(name: str) -> FileResponse:
        """The run's learning-curves figure, where its folder has one."""
        path = _curves(_choose(runs, name)[1])
        if path is None:
            raise HTTPException(404, f"Run '{name}' has no learning curves ({run_folder.CURVES}).")
        return FileResponse(path, media_type="image/png")

    @app.post("/api/predict", response_model=PredictResponse, responses=_ERRORS)
    def predict_image(
        image: Annotated[UploadFile, File(description="An image file of any common format")],
        run: Annotated[str | None, Form(description="Served run name; default the first")] = None,
        top_k: Annotated[int, Form(ge=1, le=max_classes)] = 5,
    ) -> PredictResponse:
        """The `top_k` most probable classes and a Grad-CAM heat map for the top one."""
        run, served = _choose(runs, run)
        classes = served.classifier.class_names
        if top_k > len(classes):
            raise HTTPException(422, f"top_k must lie between 1 and {len(classes)} for this run.")
        pixels = _decode_upload(image.file, served.classifier.image_size, budget)
        with served.lock:
            probabilities = served.classifier.probabilities(pixels[None])
            heatmap = None
            if served.explainer is not None:
                from cifarlab import grad_cam

                _, heat_maps = served.explainer(pixels[None], probabilities.argmax(axis=1))
                picture = grad_cam.png_bytes(grad_cam.overlay(pixels, heat_maps[0]))
                heatmap = base64.b64encode(picture).decode("ascii")
        top = prediction.top_classes("upload", probabilities[0], served.classifier, top_k)
        pairs = zip(top.classes, top.probabilities, strict=True)
        return PredictResponse(
            run=run,
            predictions=[ClassProbability(class_name=c, probability=p) for c, p in pairs],
            explained_class=classes[int(probabilities[0].argmax())],
            heatmap_png=heatmap,
        )

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon() -> FileResponse:
        """The icon, for clients that ask for it without reading a page's link to it."""
        return FileResponse(FAVICON, media_type="image/svg+xml")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def run_info(name: str, served: ServedRun) -> RunInfo:
    classifier = served.classifier
    problem = classifier.metrics_problem
    return RunInfo(
        name=name,
        experiment=classifier.metrics.get("experiment"),
        class_names=list(classifier.class_names),
        image_size=classifier.image_size,
        accuracy=classifier.accuracy,
        verdict=classifier.verdict,
        curves_url=_curves_url(name) if _curves(served) else None,
        damaged=f"its {run_folder.METRICS} {problem}" if problem is not None else None,
        source=served.source,
    )


def _curves_url(name: str) -> str:
    """The curves' URL, the name percent-encoded: a run named `base#1?x` is not cut at `#`."""
    return f"/api/runs/{quote(name, safe='')}/{run_folder.CURVES}"


def _curves(served: ServedRun) -> Path | None:
    """The run's learning-curves figure, where it is a run folder that has one."""
    run_dir = served.classifier.run_dir
    if run_dir is None or not (run_dir / run_folder.CURVES).is_file():
        return None
    return run_dir / run_folder.CURVES


def _choose(runs: dict[str, ServedRun], name: str | None) -> tuple[str, ServedRun]:
    """The named run (the first one without a name), or 404."""
    if name is None:
        name = next(iter(runs))
    if name not in runs:
        raise HTTPException(404, f"Unknown run '{name}'; served runs: {', '.join(runs)}.")
    return name, runs[name]


def _decode_upload(file: BinaryIO, image_size: int, budget: images.DecodeBudget) -> np.ndarray:
    """The uploaded image's pixels, read from its spooled file rather than copied into memory."""
    size = file.seek(0, 2)
    file.seek(0)
    if size > MAX_UPLOAD_BYTES:
        raise HTTPException(413, "The upload is larger than the 10 MB limit.")
    if not size:
        raise HTTPException(400, "The uploaded file is empty.")
    try:
        return images.load(file, image_size, budget)
    except images.ImageTooLargeError as error:
        raise HTTPException(413, str(error)) from error
    except images.DecodeBusyError as error:
        raise HTTPException(429, str(error), headers={"Retry-After": "5"}) from error
    except UserError as error:
        raise HTTPException(400, str(error)) from error


async def _validation_error(request, error: RequestValidationError) -> JSONResponse:
    """FastAPI's list of field errors as one sentence, like every other error here."""
    problems = [
        f"{'.'.join(str(part) for part in problem['loc'] if part != 'body')}: {problem['msg']}"
        for problem in error.errors()
    ]
    return JSONResponse({"detail": "Invalid request: " + "; ".join(problems) + "."}, 422)


def serve(run_dirs: list[str | Path], host: str = "127.0.0.1", port: int = 8000) -> None:
    """Load the runs and serve them until interrupted."""
    import uvicorn

    app = create_app(run_dirs)
    print(f"Serving {len(run_dirs)} run(s) at http://{host}:{port}/ (API docs at /docs)")
    uvicorn.run(app, host=host, port=port, log_level="warning", http=limits.TimedH11Protocol,
                limit_concurrency=limits.MAX_CONNECTIONS)  # fmt: skip
