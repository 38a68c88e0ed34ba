"""Drive a running ``fitv2 serve`` page in headless Chromium: choose a class and an aspect preset,
generate, wait for the image, save a screenshot. The browser test uses it; so does the README's picture:

    fitv2 serve runs/demo/run --port 7860 &
    python scripts/serve_screenshot.py http://127.0.0.1:7860 docs/serve.png --class-index 3 --aspect 1:2
"""

from __future__ import annotations

import argparse
import shutil


def drive(
    url: str,
    screenshot: str,
    class_index: int = 0,
    aspect: str = "1:2",
    steps: int | None = None,
    guidance: float | None = None,
    timeout_ms: int = 300_000,
) -> dict:
    """Use the page as a person would; returns the image's size, the height and width fields and the command."""
    from playwright.sync_api import expect, sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise RuntimeError("no chromium on PATH: run scripts/install_browser.sh")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 800})
            page.goto(url)
            page.locator("#label input").click()
            page.get_by_role("option").nth(class_index).click()
            page.locator(f"#aspect-{aspect.replace(':', '-')}").click()
            height = page.locator("#height input")
            expect(height).not_to_have_value("", timeout=10_000)
            if steps is not None:
                page.locator("#steps input[type=number]").fill(str(steps))
            if guidance is not None:
                page.locator("#guidance input[type=number]").fill(str(guidance))
            page.wait_for_timeout(500)  # let the page take the new values
            fields = [height.input_value(), page.locator("#width input").input_value()]
            page.locator("#generate").click()
            page.wait_for_function(
                "() => { const i = document.querySelector('#result img'); return i && i.naturalWidth > 0; }",
                timeout=timeout_ms,
            )
            size = page.locator("#result img").evaluate("i => [i.naturalWidth, i.naturalHeight]")
            command = page.locator("#command textarea").input_value()
            page.screenshot(path=screenshot, full_page=True)
        finally:
            browser.close()
    return {"image_size": size, "fields": [int(v) for v in fields], "command": command}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("url")
    ap.add_argument("screenshot")
    ap.add_argument("--class-index", type=int, default=0)
    ap.add_argument("--aspect", default="1:2")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--guidance", type=float)
    args = ap.parse_args()
    print(drive(args.url, args.screenshot, args.class_index, args.aspect, args.steps, args.guidance))


if __name__ == "__main__":
    main()
