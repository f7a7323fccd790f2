"""The file MLflow executes to rebuild the pyfunc when a logged model loads ("models from
code": no pickled Python object in the model). Not imported by the library itself."""

from mlflow.models import set_model

from sasan.tracking.pyfunc_model import SasanSegmenterModel

set_model(SasanSegmenterModel())
