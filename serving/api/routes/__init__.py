"""One APIRouter per resource: recommendations, events, members, experiments, pages, ops."""
