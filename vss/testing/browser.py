"""
A real headless Chromium for tests: Debian's ``chromium`` driven through its
``chromium-driver`` by Selenium. Nothing is downloaded: the browser and the driver are
the system's (``/usr/bin/chromium``, ``/usr/bin/chromedriver``; ``VSS_CHROMIUM`` and
``VSS_CHROMEDRIVER`` name others), each browser runs with a fresh profile directory of
its own, removed when it closes, and with the switches that keep it off the network
(no QUIC, no background networking, no component updates, no sync).

- ``unavailable()`` says why no browser can run here (None when one can);
  ``require()`` raises ``SkipTest`` with that reason, so a test skips clearly on a
  machine without Chromium. ``.ci/run`` installs ``chromium chromium-driver``.
- ``Browser`` is one headless Chromium with blocking calls (a benchmark script or a
  thread): ``open(url)``, ``js(script, *args)``, ``wait_for(what, script)``,
  ``viewport(width, height, mobile)``, ``screenshot(name)``, ``console()``, ``close()``.
- ``TwistedBrowser`` wraps one for trial tests whose reactor runs servers in the same
  process: every call goes to a private thread and answers a Deferred, so the reactor
  never blocks. ``start_browser(testcase)`` skips when no browser can run, starts one and
  closes it when the test ends.
- Screenshots go to ``artefacts_dir()``: ``VSS_TEST_ARTEFACTS`` or ``./test-artefacts``
  (under trial's working directory, ``_trial_temp``), so that CI keeps them with the run.
"""

import os
import shutil
import tempfile
from unittest import SkipTest

from twisted.internet import threads
from twisted.python.threadpool import ThreadPool

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SWITCHES = (
    "--headless=new",
    "--no-sandbox",  # tests run as root in CI containers
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--disable-extensions",
    "--mute-audio",
    "--autoplay-policy=no-user-gesture-required",
)
DEFAULT_SIZE = (1280, 800)
ARTEFACTS_ENV = "VSS_TEST_ARTEFACTS"


def chromium_path():
    return os.environ.get("VSS_CHROMIUM", CHROMIUM)


def chromedriver_path():
    return os.environ.get("VSS_CHROMEDRIVER", CHROMEDRIVER)


def unavailable():
    """Why no headless Chromium can run here, or None."""
    try:
        import selenium  # noqa: F401 - only asked whether it is installed
    except ImportError:
        return "selenium is not installed (pip install -e '.[test]')"
    for what, path, package in (("chromium", chromium_path(), "chromium"),
                                ("chromedriver", chromedriver_path(), "chromium-driver")):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return f"no {what} at {path} (apt-get install {package})"
    return None


def require():
    """Raise ``SkipTest`` naming what is missing when no browser can run here."""
    reason = unavailable()
    if reason is not None:
        raise SkipTest(f"no headless Chromium: {reason}")


def artefacts_dir():
    path = os.path.abspath(os.environ.get(ARTEFACTS_ENV) or "test-artefacts")
    os.makedirs(path, exist_ok=True)
    return path


class BrowserError(AssertionError):
    """A wait in the page that did not come true in time (with what the page said)."""


class Browser:
    """One headless Chromium (blocking calls). ``size``: the window's (width, height)."""

    def __init__(self, size=DEFAULT_SIZE, switches=(), log_level="ALL"):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.profile = tempfile.mkdtemp(prefix="vss-chromium-")
        options = webdriver.ChromeOptions()
        options.binary_location = chromium_path()
        for switch in (*SWITCHES, *switches):
            options.add_argument(switch)
        options.add_argument(f"--user-data-dir={self.profile}")
        options.add_argument(f"--window-size={size[0]},{size[1]}")
        options.set_capability("goog:loggingPrefs", {"browser": log_level})
        service = Service(executable_path=chromedriver_path(), log_output=os.devnull)
        try:
            self.driver = webdriver.Chrome(service=service, options=options)
        except BaseException:
            shutil.rmtree(self.profile, ignore_errors=True)
            raise
        self.driver.set_page_load_timeout(60)
        self.driver.set_script_timeout(60)
        self.logs = []

    def open(self, url):
        self.driver.get(url)

    def js(self, script, *args):
        """Run ``script`` (a function body: ``return ...``) in the page."""
        return self.driver.execute_script(script, *args)

    def js_async(self, script, *args):
        """Run ``script`` whose last argument is the callback it calls with its result."""
        return self.driver.execute_async_script(script, *args)

    def wait_for(self, what, script, *args, timeout=30.0, interval=0.1):
        """Evaluate ``script`` until it returns something true and return that; raise
        ``BrowserError`` naming ``what`` (and the page's last console lines) after
        ``timeout`` seconds."""
        from selenium.common.exceptions import TimeoutException
        from selenium.webdriver.support.ui import WebDriverWait

        last = []

        def check(driver):
            last[:] = [driver.execute_script(script, *args)]
            return last[0]

        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=interval).until(check)
        except TimeoutException:
            lines = "\n".join(self.console()[-15:])
            raise BrowserError(f"timed out after {timeout} s waiting for {what}; last value "
                               f"{last[0] if last else None!r}; console:\n{lines}") from None

    def viewport(self, width, height, mobile=False, scale=1):
        """Make the page's viewport exactly ``width`` x ``height`` CSS pixels (a phone
        with ``mobile``: touch, no scroll bars)."""
        self.driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride", {
            "width": width, "height": height, "deviceScaleFactor": scale, "mobile": mobile})
        if mobile:
            self.driver.execute_cdp_cmd("Emulation.setTouchEmulationEnabled",
                                        {"enabled": True, "maxTouchPoints": 5})

    def screenshot(self, name):
        """Save a PNG of the viewport as ``<artefacts>/<name>.png``; return its path."""
        path = os.path.join(artefacts_dir(), f"{name}.png")
        self.driver.save_screenshot(path)
        return path

    def console(self):
        """The page's console lines so far (each ``LEVEL message``)."""
        try:
            for entry in self.driver.get_log("browser"):
                self.logs.append(f"{entry.get('level')} {entry.get('message')}")
        except Exception:  # noqa: BLE001 - a closed page has no more lines
            pass
        return list(self.logs)

    def close(self):
        try:
            self.driver.quit()
        finally:
            shutil.rmtree(self.profile, ignore_errors=True)


class TwistedBrowser:
    """A ``Browser`` whose calls run on a private thread; each answers a Deferred."""

    def __init__(self, reactor, pool, browser):
        self.reactor = reactor
        self.pool = pool
        self.browser = browser

    @classmethod
    def start(cls, reactor, **kwargs):
        pool = ThreadPool(1, 1, name="chromium")
        pool.start()
        d = threads.deferToThreadPool(reactor, pool, Browser, **kwargs)

        def failed(f):
            pool.stop()
            return f

        return d.addCallbacks(lambda b: cls(reactor, pool, b), failed)

    def call(self, fn, *args, **kwargs):
        """``fn(browser, *args, **kwargs)`` on the browser's thread."""

        return threads.deferToThreadPool(self.reactor, self.pool, fn, self.browser,
                                         *args, **kwargs)

    def open(self, url):
        return self.call(Browser.open, url)

    def js(self, script, *args):
        return self.call(Browser.js, script, *args)

    def js_async(self, script, *args):
        return self.call(Browser.js_async, script, *args)

    def wait_for(self, what, script, *args, timeout=30.0):
        return self.call(Browser.wait_for, what, script, *args, timeout=timeout)

    def viewport(self, width, height, mobile=False):
        return self.call(Browser.viewport, width, height, mobile)

    def screenshot(self, name):
        return self.call(Browser.screenshot, name)

    def console(self):
        return self.call(Browser.console)

    def close(self):
        d = self.call(Browser.close)
        d.addBoth(lambda r: (self.pool.stop(), r)[1])
        return d


def start_browser(testcase, reactor=None, **kwargs):
    """For a trial test: skip when no browser can run here, else a Deferred of a
    ``TwistedBrowser`` closed when the test ends."""
    require()
    if reactor is None:
        from twisted.internet import reactor

    d = TwistedBrowser.start(reactor, **kwargs)

    def started(browser):
        testcase.addCleanup(browser.close)
        return browser

    return d.addCallback(started)
