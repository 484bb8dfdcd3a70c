"""The Gradio demo in a real browser: Debian's chromium driven by playwright (never `playwright install`) uploads an
image, asks about it, reads the streamed answer and the context line on the page and saves a screenshot (also to
build/)."""

import shutil
import time
from pathlib import Path

import pytest

from modeling_unimoe.training.synthetic import is_correct, make_example


pytest.importorskip("gradio")
playwright_api = pytest.importorskip(
    "playwright.sync_api", reason="playwright is not installed (pip install playwright)"
)

from tests.demo.test_demo import SEED, serve_demo  # noqa: E402
from tests.helpers import REPO, needs_tiny_checkpoint  # noqa: E402


CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT_COPY = REPO / "build" / "demo-screenshot.png"

pytestmark = [
    pytest.mark.skipif(
        not CHROMIUM.is_file(),
        reason=f"{CHROMIUM} is missing: install Debian's chromium (`apt-get install chromium`, or `make test` as root)",
    ),
    needs_tiny_checkpoint,
]


@pytest.fixture(scope="module")
def demo_url(tmp_path_factory):
    with serve_demo(tmp_path_factory.mktemp("demo-browser")) as url:
        yield url


@pytest.fixture
def page():
    with playwright_api.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser.new_page(viewport={"width": 1280, "height": 800})
        finally:
            browser.close()


def test_image_question_in_the_browser(demo_url, page, tmp_path):
    example = make_example("image_color", "test", 0, SEED)
    image = tmp_path / "shape.png"
    example["image"].save(image)
    start = time.monotonic()
    page.goto(demo_url)
    page.wait_for_selector("textarea[data-testid=textbox]", timeout=60_000)
    page.set_input_files("input[data-testid=file-upload]", str(image))
    page.wait_for_selector("[class*=thumbnail] img", timeout=30_000)  # uploaded: the textbox shows its thumbnail
    page.fill("textarea[data-testid=textbox]", example["question"])
    page.click("button.submit-button")
    page.wait_for_selector("[data-testid=bot]", timeout=60_000)  # the first streamed tokens
    page.wait_for_selector("img[src*='experts-']", timeout=60_000)  # the final answer comes with the experts plot
    answer = page.inner_text("[data-testid=bot]").strip()
    screenshot = tmp_path / "demo-screenshot.png"
    page.screenshot(path=str(screenshot), full_page=True)
    SCREENSHOT_COPY.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(screenshot, SCREENSHOT_COPY)
    assert is_correct(answer, example["answer"]), f"asked {example['question']!r}: page shows {answer!r}"
    assert example["question"] in " ".join(page.locator("[data-testid=user]").all_inner_texts())
    # the page says plainly whether answers use the conversation so far, and what the last answer saw
    assert page.get_by_label("Use the conversation so far").is_checked()
    assert "History on: no earlier exchange yet" in page.get_by_label("Context of the last answer").input_value()
    assert time.monotonic() - start < 120
