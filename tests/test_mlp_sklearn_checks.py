"""scikit-learn estimator API compliance (``parametrize_with_checks``).

Skipped checks (``expected_failed_checks``): none. Checks sklearn itself skips
here: ``check_array_api_input`` (needs SCIPY_ARRAY_API) and the pandas checks
when pandas is not installed.
"""
import warnings

from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.estimator_checks import parametrize_with_checks

from sparseprune import MLPClassifier, MLPRegressor

# Small and short so the ~50 checks per estimator stay fast; (32,) units with a
# higher step size still pass sklearn's accuracy/R² thresholds.
ESTIMATORS = [
    MLPClassifier(hidden_layer_sizes=(32,), learning_rate_init=1e-2, max_iter=200, random_state=0),
    MLPRegressor(hidden_layer_sizes=(32,), learning_rate_init=1e-2, max_iter=200, random_state=0),
]
EXPECTED_FAILED = {}


@parametrize_with_checks(ESTIMATORS, expected_failed_checks=lambda est: EXPECTED_FAILED)
def test_sklearn_compatible(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)
