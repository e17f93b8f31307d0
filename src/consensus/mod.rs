//! The pure consensus core (issue 3). Filled in on its own branch.
