# Helpers that keep the CMakeLists short: one static library per source folder, one test binary per
# test file (labelled), one benchmark binary per bench file.

# sparrow_add_library(NAME DIR <dir> [LIBS ...]): every .cpp in <dir> (and .cu when CUDA is on).
function(sparrow_add_library name)
  cmake_parse_arguments(A "" "DIR" "LIBS" ${ARGN})
  file(GLOB srcs CONFIGURE_DEPENDS ${A_DIR}/*.cpp)
  if(SPARROW_HAS_CUDA)
    file(GLOB cu CONFIGURE_DEPENDS ${A_DIR}/*.cu)
    list(APPEND srcs ${cu})
  endif()
  add_library(${name} STATIC ${srcs})
  target_link_libraries(${name} PUBLIC sparrow_flags ${A_LIBS})
  if(SPARROW_HAS_CUDA)
    target_link_libraries(${name} PUBLIC sparrow_cuda_libs)
    set_target_properties(${name} PROPERTIES CUDA_SEPARABLE_COMPILATION OFF)
  endif()
endfunction()

# sparrow_add_test(NAME SOURCES ... LIBS ... LABELS ...): a GoogleTest binary, discovered at build time.
function(sparrow_add_test name)
  cmake_parse_arguments(A "" "" "SOURCES;LIBS;LABELS" ${ARGN})
  add_executable(${name} ${A_SOURCES})
  target_link_libraries(${name} PRIVATE ${A_LIBS} sparrow_flags GTest::gtest GTest::gtest_main)
  target_compile_definitions(${name} PRIVATE SPARROW_SOURCE_DIR="${CMAKE_SOURCE_DIR}"
                             SPARROW_BIN_DIR="${CMAKE_BINARY_DIR}/bin")
  gtest_discover_tests(${name} DISCOVERY_TIMEOUT 60 PROPERTIES LABELS "${A_LABELS}")
  # The unit and parity binaries (not slow ones) make up `check-targets`, which scripts/sanitize.sh builds.
  if(("unit" IN_LIST A_LABELS OR "parity" IN_LIST A_LABELS) AND NOT "slow" IN_LIST A_LABELS)
    set_property(GLOBAL APPEND PROPERTY SPARROW_CHECK_TESTS ${name})
  endif()
endfunction()

# sparrow_add_bench(NAME SOURCES ... LIBS ...): a benchmark binary in build/bin.
function(sparrow_add_bench name)
  cmake_parse_arguments(A "" "" "SOURCES;LIBS" ${ARGN})
  add_executable(${name} ${A_SOURCES})
  target_link_libraries(${name} PRIVATE ${A_LIBS} sparrow_flags benchmark::benchmark)
endfunction()
