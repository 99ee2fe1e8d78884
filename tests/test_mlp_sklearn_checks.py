"""scikit-learn estimator API compliance (``parametrize_with_checks``) on the default constructors.

Skipped checks (``expected_failed_checks``): none. Checks sklearn itself skips
here: ``check_array_api_input`` (needs SCIPY_ARRAY_API) and the pandas checks
when pandas is not installed.
"""
import warnings

from sklearn.exceptions import ConvergenceWarning
from sklearn.utils.estimator_checks import parametrize_with_checks

from sparseprune import MLPClassifier, MLPRegressor


@parametrize_with_checks([MLPClassifier(), MLPRegressor()], expected_failed_checks=lambda est: {})
def test_sklearn_compatible(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        check(estimator)
