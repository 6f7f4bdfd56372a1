"""genbench.leaderboard."""
