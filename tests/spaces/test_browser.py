"""End to end in a real headless browser: Debian's chromium driven by Playwright."""

from __future__ import annotations

import shutil

import pytest

CHROMIUM = shutil.which("chromium")


@pytest.mark.skipif(CHROMIUM is None, reason="needs Debian's chromium (.ci/run installs it)")
def test_merge_then_classify_an_example_in_the_browser(space_url, tiny_playgrounds, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url = space_url[0]
    pg = tiny_playgrounds[0]
    cell = pg.bench.held_in_cells[1].name
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1600})
            page.goto(url)
            status = page.locator("#merge-status")
            expect(status).to_contain_text("No merge yet", timeout=60_000)
            # move the TIES density slider (its number box), then merge
            density = page.locator("#hp-ties-density input[type=number]")
            density.fill("0.35")
            density.press("Enter")
            density.blur()
            page.get_by_role("button", name="Merge", exact=True).click()
            expect(status).to_contain_text("Merged", timeout=120_000)
            expect(status).to_contain_text("density=0.35")

            page.get_by_role("tab", name="Classifier").click()
            example = page.locator("#example input")
            example.click()
            page.get_by_role("option", name=cell, exact=True).click()
            expect(page.locator("#input-image img")).to_be_visible(timeout=60_000)
            page.get_by_role("button", name="Classify", exact=True).click()
            table = page.locator("#probabilities")
            expect(table).to_contain_text("merge", timeout=120_000)
            expect(table).to_contain_text(pg.expert_labels[-1])
            words = table.inner_text().split()
            top = words[words.index("merge") + 1]  # the merge row's "top" column
            assert top in [str(d) for d in range(10)]
            expect(page.locator("#merged-label")).to_contain_text(top)  # the Label agrees
            expect(page.locator("#merged-label")).to_contain_text("%")
            shot = tmp_path / "space-classify.png"
            page.screenshot(path=str(shot), full_page=True)
        finally:
            page.screenshot(path=str(tmp_path / "space-last.png"), full_page=True)
            browser.close()
    assert shot.stat().st_size > 10_000
