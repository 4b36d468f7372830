"""The web page in a real browser (Debian's headless chromium via Selenium) against a real `medagent serve`:
upload a CT NIfTI and a dictation, wait for the report, and check what a user sees. No mocks: the rule planner
runs the CT analysis and Whisper on this machine."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from .conftest import EXAMPLES, REPO, start_server, write_config

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
REPORT_TIMEOUT_S = 300  # the CT analysis and Whisper on 2 shared cores, models loaded cold


def _case_inputs() -> tuple[Path, Path, set[str]]:
    """The NIfTI CT of examples/ct_nifti_case.json, the audio of examples/dictation_case.json and the content
    words of its known transcript (examples/audio/transcripts.json)."""
    ct_case = json.loads((EXAMPLES / "ct_nifti_case.json").read_text(encoding="utf-8"))
    dictation = json.loads((EXAMPLES / "dictation_case.json").read_text(encoding="utf-8"))
    ct = EXAMPLES / next(a["path"] for a in ct_case["attachments"] if a["kind"] == "volume")
    audio = EXAMPLES / next(a["path"] for a in dictation["attachments"] if a["kind"] == "audio")
    transcripts = json.loads((EXAMPLES / "audio" / "transcripts.json").read_text(encoding="utf-8"))
    return ct, audio, _words(transcripts[audio.name])


def _words(text: str) -> set[str]:
    return {w for w in re.findall(r"[a-z]+", text.lower()) if len(w) >= 4}


def _heard(transcript: str, spoken: set[str]) -> None:
    """What Whisper hears depends on the CPU (int8 kernels), so not every word: two of the dictation's content
    words ('chest', 'pain', 'fever', ...) must be there."""
    assert transcript.strip(), "the speech card shows no transcript"
    assert len(_words(transcript) & spoken) >= 2, f"the transcript {transcript!r} shares too little with {sorted(spoken)}"


@pytest.fixture
def browser(tmp_path):
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(f"{', '.join(missing)} not found: `make system-deps` installs chromium and chromedriver")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1800",
                 "--disable-dev-shm-usage", "--no-first-run", "--disable-background-networking"):
        options.add_argument(flag)
    # Every request the page makes (Network.requestWillBeSent) and the JS console.
    options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log")),
                              options=options)
    driver.set_page_load_timeout(60)
    try:
        yield driver
    finally:
        driver.quit()


class Network:
    """The URLs of every request the page sent, read from Chrome's performance log as the test goes."""

    def __init__(self, driver) -> None:
        self.driver = driver
        self.urls: list[str] = []

    def read(self) -> list[str]:
        for entry in self.driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            if message.get("method") == "Network.requestWillBeSent":
                self.urls.append(message["params"]["request"]["url"])
        return self.urls


def _save(driver, tmp_path: Path, name: str) -> Path:
    path = tmp_path / name
    driver.save_screenshot(str(path))
    target = os.environ.get("MEDAGENT_TEST_SCREENSHOTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, Path(target) / name)
    return path


def _wait(driver, condition, timeout: float, what: str, poll: float = 0.25):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition(driver)
        if value:
            return value
        time.sleep(poll)
    status = driver.execute_script("return (document.getElementById('status') || {}).textContent")
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; page status: {status!r}")


def _image_loaded(driver, element) -> bool:
    return bool(driver.execute_script("return arguments[0].complete && arguments[0].naturalWidth > 0", element))


def test_page_runs_a_case_and_links_its_evidence(service_server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    ct, audio, spoken = _case_inputs()
    network = Network(browser)
    started = time.monotonic()
    browser.get(f"{service_server.url}/")

    notice = _wait(browser, lambda d: d.find_element(By.ID, "notice"), 30, "the notice")
    assert notice.is_displayed() and "research use only" in notice.text.lower()
    _wait(browser, lambda d: "Server" in d.find_element(By.ID, "server").text, 30, "the health check")

    browser.find_element(By.ID, "history").send_keys("Chest pain and cough in a former smoker.")
    # One send_keys with both paths, newline-separated: how Selenium fills a <input type=file multiple>.
    browser.find_element(By.ID, "files").send_keys(f"{ct}\n{audio}")
    rows = _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#file-list li")) == 2, 10, "two file rows")
    assert rows
    # A NIfTI header has no modality: the user says it is a CT (the CT analysis runs only on CT).
    Select(browser.find_element(By.CSS_SELECTOR, f'select[data-role="modality"][data-file="{ct.name}"]')).select_by_value("CT")
    _save(browser, tmp_path, "after_upload.png")

    browser.find_element(By.ID, "start").click()
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#calls li[data-tool]"), 60, "the first tool call")
    _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#evidence .card[data-evidence]"), REPORT_TIMEOUT_S, "the report")
    report_s = time.monotonic() - started

    job_id = browser.execute_script("return new URLSearchParams(location.search).get('job')")
    assert job_id, "the page names the job it shows in its address"
    with service_server.client() as client:
        result = client.get(f"/api/jobs/{job_id}/result").json()
    evidence = {e["id"]: e for e in result["evidence"]}

    # The live tool list: every call the run made, each finished.
    states = {li.get_attribute("data-call"): (li.get_attribute("data-tool"), li.get_attribute("data-state"))
              for li in browser.find_elements(By.CSS_SELECTOR, "#calls li[data-call]")}
    assert {c["call_id"] for c in result["calls"]} <= set(states), states
    assert all(state in ("done", "error") for _, state in states.values()), states
    assert {"imaging.ct_quant", "speech.transcribe"} <= {tool for tool, _ in states.values()}, states

    # Evidence cards, one per evidence item; the CT overlay image has really loaded.
    cards = browser.find_elements(By.CSS_SELECTOR, "#evidence .card[data-evidence]")
    assert [c.get_attribute("data-evidence") for c in cards] == list(evidence)
    overlay_id = next(e["id"] for e in result["evidence"] if e["tool"] == "imaging.ct_quant"
                      and any(a.endswith(".png") for a in e["artifacts"]))
    overlay = browser.find_element(By.CSS_SELECTOR, f'.card[data-evidence="{overlay_id}"] img')
    _wait(browser, lambda d: _image_loaded(d, overlay), 30, "the CT overlay image")

    # The speech card shows the transcript, and the transcript says what the dictation says.
    speech_id = next(e["id"] for e in result["evidence"] if e["tool"] == "speech.transcribe")
    transcript = browser.find_element(By.CSS_SELECTOR, f'.card[data-evidence="{speech_id}"] .transcript').text
    _heard(transcript, spoken)

    # The slice scroller: a slice is shown, and the arrow key moves to the next one.
    slider = _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#volumes input[type=range]"), 30, "the slice scroller")[0]
    slice_img = browser.find_element(By.CSS_SELECTOR, "#volumes .viewer img")
    _wait(browser, lambda d: _image_loaded(d, slice_img), 30, "a CT slice")
    first = slice_img.get_attribute("src")
    slider.send_keys(Keys.ARROW_RIGHT)
    _wait(browser, lambda d: slice_img.get_attribute("src") != first and _image_loaded(d, slice_img), 30, "the next CT slice")

    # The differential is there, its evidence linked.
    assert browser.find_elements(By.CSS_SELECTOR, "#differential tbody tr")
    assert browser.find_elements(By.CSS_SELECTOR, "#differential a.cite")

    browser.execute_script("window.scrollTo(0, 0)")
    _save(browser, tmp_path, "after_report.png")

    # Clicking [E2] in the report scrolls to evidence card E2 and highlights it.
    assert "E2" in evidence
    browser.execute_script("window.scrollTo(0, document.body.scrollHeight)")
    link = browser.find_element(By.CSS_SELECTOR, '#report a.cite[data-cite="E2"]')
    browser.execute_script("arguments[0].scrollIntoView({block: 'start'})", link)
    link.click()
    card = browser.find_element(By.ID, "E2")
    _wait(browser, lambda d: "highlight" in card.get_attribute("class").split(), 5, "card E2 highlighted")
    in_view = browser.execute_script(
        "const r = arguments[0].getBoundingClientRect();"
        "return r.top >= 0 && r.bottom <= window.innerHeight && r.left >= 0 && r.right <= window.innerWidth", card)
    assert in_view, "card E2 is not in the viewport after its citation was clicked"
    assert browser.execute_script("return document.activeElement.id") == "E2"
    assert len(browser.find_elements(By.CSS_SELECTOR, ".card.highlight")) == 1
    _save(browser, tmp_path, "after_citation.png")

    # Every request went to this server; the page logged no error.
    urls = network.read()
    assert any("/api/jobs" in u for u in urls) and any("/files/artifacts/" in u for u in urls), urls
    foreign = [u for u in urls if urlsplit(u).hostname != "127.0.0.1"]
    assert not foreign, f"the page reached beyond 127.0.0.1: {foreign}"
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors
    print(f"\nbrowser test: report shown after {report_s:.1f} s, {len(urls)} requests, screenshots in {tmp_path}")


def test_page_holds_a_consultation_with_a_file_mid_conversation(service_server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    _, audio, spoken = _case_inputs()
    network = Network(browser)
    browser.get(f"{service_server.url}/")
    _wait(browser, lambda d: "Server" in d.find_element(By.ID, "server").text, 30, "the health check")
    browser.find_element(By.ID, "mode-chat").click()
    browser.find_element(By.ID, "new-session").click()
    session_id = _wait(browser, lambda d: d.find_element(By.ID, "session-id").text, 30, "a new consultation")

    def assistant_turns(d):
        return d.find_elements(By.CSS_SELECTOR, "#turns li.assistant")

    def idle(d):  # the page marks the conversation busy until the turn's reply and result are shown
        return d.find_element(By.ID, "chat").get_attribute("aria-busy") == "false"

    browser.find_element(By.ID, "message").send_keys("Three weeks of left upper quadrant pain and night sweats.")
    browser.find_element(By.ID, "send").click()
    _wait(browser, lambda d: assistant_turns(d) and idle(d), REPORT_TIMEOUT_S, "the first reply")
    assert browser.find_elements(By.CSS_SELECTOR, "#calls li[data-state=done]"), "the turn's tools are listed"
    first_cards = len(browser.find_elements(By.CSS_SELECTOR, "#evidence .card"))
    assert first_cards, "the consultation's evidence so far is shown"

    # A dictation attached mid-conversation is transcribed; its card shows the transcript.
    browser.find_element(By.ID, "attach-file").send_keys(str(audio))
    Select(browser.find_element(By.ID, "attach-kind")).select_by_value("audio")
    browser.find_element(By.ID, "attach").click()
    _wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#evidence .card")) > first_cards and idle(d),
          REPORT_TIMEOUT_S, "the attachment's evidence")
    transcript = browser.find_element(By.CSS_SELECTOR, ".card .transcript").text
    _heard(transcript, spoken)
    assert not browser.find_element(By.ID, "chat-error").is_displayed()
    _save(browser, tmp_path, "consultation.png")

    # Deleting it from the page removes it on the server.
    browser.find_element(By.CSS_SELECTOR, f'button[aria-label="delete consultation {session_id}"]').click()
    browser.switch_to.alert.accept()
    _wait(browser, lambda d: not d.find_elements(By.CSS_SELECTOR, f'button[data-session="{session_id}"]'), 30,
          "the consultation gone from the list")
    with service_server.client() as client:
        assert client.get(f"/api/sessions/{session_id}").status_code == 404
    foreign = [u for u in network.read() if urlsplit(u).hostname != "127.0.0.1"]
    assert not foreign, foreign


def test_page_asks_for_the_token_and_images_carry_it(tmp_path, browser):
    """A server with a token: the page asks for it once, sends it on every API call (the event stream included)
    and sets the cookie that <img> requests carry."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    ct, _, _ = _case_inputs()
    secret = "page-test-token-0123456789"
    server = start_server(write_config(tmp_path / "server", f'token = "{secret}"\n'), tmp_path / "server.log", token=secret)
    try:
        browser.get(f"{server.url}/")
        dialog = _wait(browser, lambda d: d.find_element(By.CSS_SELECTOR, "#token-dialog[open]"), 30, "the token dialog")
        assert dialog.is_displayed()
        browser.find_element(By.ID, "token").send_keys(secret, Keys.ENTER)
        _wait(browser, lambda d: "Server" in d.find_element(By.ID, "server").text, 30, "the health check with the token")
        assert browser.execute_script("return sessionStorage.getItem('medagent_token')") == secret

        # Without a modality the NIfTI is only described: a quick job, and its slices are <img> requests.
        browser.find_element(By.ID, "files").send_keys(str(ct))
        browser.find_element(By.ID, "start").click()
        _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#evidence .card"), REPORT_TIMEOUT_S, "the report")
        slice_img = _wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "#volumes .viewer img"), 30, "the slice scroller")[0]
        _wait(browser, lambda d: _image_loaded(d, slice_img), 30, "a CT slice loaded with the token cookie")
        assert not [e for e in browser.get_log("browser") if e["level"] == "SEVERE" and "401" not in e["message"]]
    finally:
        server.stop()


def test_report_marks_flagged_sentences_and_never_renders_server_text_as_html(service_server, browser):
    """The page's renderer (served by the real server, run by the real browser) on the golden result with one
    sentence flagged by grounding and one carrying markup: the flag is visible, the markup stays text."""
    from selenium.webdriver.common.by import By

    result = json.loads((REPO / "tests" / "data" / "golden" / "multimodal_rule_result.json").read_text(encoding="utf-8"))
    result["grounding"].update(status="checked", checker="test", supported=11, flagged=1)
    result["report"]["sentences"][1].update(verdict="unsupported", reason="E2 does not state this")
    result["report"]["sentences"][2]["text"] = '<img src="x" id="injected" onerror="window.pwned=1"> lung [E3]'
    browser.get(f"{service_server.url}/")
    _wait(browser, lambda d: "Server" in d.find_element(By.ID, "server").text, 30, "the health check")
    browser.execute_async_script(
        "const [result, done] = arguments;"
        "import('/static/render.js').then((m) => {"
        "  document.getElementById('report').replaceChildren(...m.renderReport(result));"
        "  document.getElementById('evidence').replaceChildren(...m.renderEvidence(result, (p) => '/none/' + p));"
        "  document.getElementById('result').hidden = false; done(true); });",
        result,
    )
    flagged = browser.find_elements(By.CSS_SELECTOR, "#report .sentence.flagged")
    assert len(flagged) == 1 and flagged[0].is_displayed()
    assert "unsupported" in flagged[0].text and "E2 does not state this" in flagged[0].text
    assert not browser.find_elements(By.ID, "injected")
    assert not browser.execute_script("return window.pwned")
    plain = browser.find_elements(By.CSS_SELECTOR, "#report .sentence")[2]
    assert '<img src="x"' in plain.text
    # The inline citation in that text and the appended ones are links to the cards.
    assert plain.find_element(By.CSS_SELECTOR, 'a.cite[data-cite="E3"]')
    plain.find_element(By.CSS_SELECTOR, 'a.cite[data-cite="E3"]').click()
    assert "highlight" in browser.find_element(By.ID, "E3").get_attribute("class").split()
