"""The public web leaderboard: pages built from verified ledgers, checked again in the browser.

``model`` reads what a page shows from a ledger store, ``pages`` and ``chart`` turn it into HTML
(pure functions), ``site`` names every file of the site, ``static`` writes them to a folder and
``server`` serves them with ETags; ``static/verify.js`` re-verifies every signature and hash
link in the visitor's browser and re-computes the numbers the pages claim.
"""
