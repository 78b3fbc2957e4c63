//! Native flow tests.
