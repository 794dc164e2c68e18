# The generator.consumer test: installs the build tree into PREFIX, then configures, builds and runs
# the consumer project (tests/consumer) against it.
# Variables: BUILD_DIR PREFIX SOURCE_DIR WORK_DIR CXX CONFIG.
function(run)
  execute_process(COMMAND ${ARGV} RESULT_VARIABLE rv OUTPUT_VARIABLE out ERROR_VARIABLE err)
  message(STATUS "$ ${ARGV}\n${out}${err}")
  if(NOT rv EQUAL 0)
    message(FATAL_ERROR "failed (${rv}): ${ARGV}")
  endif()
endfunction()

file(REMOVE_RECURSE "${PREFIX}" "${WORK_DIR}")
set(config_args)
if(CONFIG)
  set(config_args --config "${CONFIG}")
endif()
run("${CMAKE_COMMAND}" --install "${BUILD_DIR}" --prefix "${PREFIX}" ${config_args})
# The plugin on PATH (bin/), runnable from the installed prefix.
execute_process(COMMAND "${PREFIX}/bin/protoc-gen-xymqtt" --version RESULT_VARIABLE rv OUTPUT_VARIABLE out
                ERROR_VARIABLE err)
file(STRINGS "${SOURCE_DIR}/../../VERSION" version LIMIT_COUNT 1)
if(NOT rv EQUAL 0 OR NOT out STREQUAL "protoc-gen-xymqtt ${version}\n")
  message(FATAL_ERROR "bin/protoc-gen-xymqtt --version: ${rv} '${out}${err}', expected 'protoc-gen-xymqtt ${version}'")
endif()
run("${CMAKE_COMMAND}" -S "${SOURCE_DIR}" -B "${WORK_DIR}" "-DCMAKE_PREFIX_PATH=${PREFIX}"
    "-DCMAKE_CXX_COMPILER=${CXX}" -DCMAKE_BUILD_TYPE=Debug)
run("${CMAKE_COMMAND}" --build "${WORK_DIR}" -j2)
run("${WORK_DIR}/consumer_test")

# Without CMake: the pkg-config files of the same prefix.
find_program(PKG_CONFIG pkg-config REQUIRED)
set(ENV{PKG_CONFIG_PATH} "${PREFIX}/lib/pkgconfig:${PREFIX}/lib/x86_64-linux-gnu/pkgconfig")
execute_process(COMMAND "${PKG_CONFIG}" --cflags --libs xymqtt-testing
                RESULT_VARIABLE rv OUTPUT_VARIABLE flags ERROR_VARIABLE err OUTPUT_STRIP_TRAILING_WHITESPACE)
if(NOT rv EQUAL 0)
  message(FATAL_ERROR "pkg-config xymqtt-testing: ${err}")
endif()
separate_arguments(flags UNIX_COMMAND "${flags}")
run("${CXX}" -std=c++17 "${SOURCE_DIR}/pkgconfig_main.cpp" -o "${WORK_DIR}/pkgconfig_test" ${flags})
run("${WORK_DIR}/pkgconfig_test")
