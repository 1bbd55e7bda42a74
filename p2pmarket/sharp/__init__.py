"""SHARP (docs/design.md section 10), pure: claims and tickets, the site's claim tree,
conflict proofs."""
