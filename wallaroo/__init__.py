"""The Wallaroo Python API: describe a stream-processing application.

``wallaroo run app.py`` loads the application, calls its
``application_setup(args)`` and runs what ``ApplicationBuilder.build()``
returns.  This package only re-exports; see the private modules for code.
"""

from ._builder import ApplicationBuilder as ApplicationBuilder
from ._configs import KafkaSinkConfig as KafkaSinkConfig
from ._configs import KafkaSourceConfig as KafkaSourceConfig
from ._configs import TCPSinkConfig as TCPSinkConfig
from ._configs import TCPSourceConfig as TCPSourceConfig
from ._configs import tcp_parse_input_addrs as tcp_parse_input_addrs
from ._configs import tcp_parse_output_addrs as tcp_parse_output_addrs
from ._decorators import computation as computation
from ._decorators import computation_multi as computation_multi
from ._decorators import decoder as decoder
from ._decorators import encoder as encoder
from ._decorators import key_extractor as key_extractor
from ._decorators import partition as partition
from ._decorators import state_computation as state_computation
from ._decorators import state_computation_multi as state_computation_multi
from ._errors import WallarooParameterError as WallarooParameterError
from ._kafka_cli import CustomKafkaSinkCLIParser as CustomKafkaSinkCLIParser
from ._kafka_cli import CustomKafkaSourceCLIParser as CustomKafkaSourceCLIParser
from ._kafka_cli import DefaultKafkaSinkCLIParser as DefaultKafkaSinkCLIParser
from ._kafka_cli import DefaultKafkaSourceCLIParser as DefaultKafkaSourceCLIParser
from ._kafka_cli import kafka_parse_sink_options as kafka_parse_sink_options
from ._kafka_cli import kafka_parse_source_options as kafka_parse_source_options

__version__ = "0.1.0"
