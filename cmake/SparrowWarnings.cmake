# Compiler flags shared by every sparrow target (CPU side): warnings, optimisation, -march.
add_library(sparrow_flags INTERFACE)
target_compile_options(sparrow_flags INTERFACE
  $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wno-unused-parameter>
  $<$<AND:$<COMPILE_LANGUAGE:CXX>,$<CONFIG:Release>>:-O3>)
if(SPARROW_NATIVE)
  target_compile_options(sparrow_flags INTERFACE $<$<COMPILE_LANGUAGE:CXX>:-march=native>)
endif()
target_include_directories(sparrow_flags INTERFACE ${CMAKE_SOURCE_DIR})
