# Injected with -DCMAKE_PROJECT_INCLUDE when building tsa_msgs against the ROS 2 PyPI wheels.
#
# The wheels' *__rosidl_generator_py export files name the include folders of the machine that
# built them (/opt/python/cp311-cp311/...). CMake refuses imported targets with non-existent
# include paths at generate time, so at the end of configure we rewrite those entries to this
# interpreter's Python and NumPy include folders. Nothing outside the build tree is modified.
if(NOT DEFINED TSA_PYTHON_INCLUDE_DIR OR NOT DEFINED TSA_NUMPY_INCLUDE_DIR)
  message(FATAL_ERROR "fix_wheel_include_dirs.cmake needs TSA_PYTHON_INCLUDE_DIR and TSA_NUMPY_INCLUDE_DIR")
endif()

function(tsa_fix_wheel_include_dirs)
  get_property(_targets DIRECTORY "${CMAKE_SOURCE_DIR}" PROPERTY IMPORTED_TARGETS)
  foreach(_target IN LISTS _targets)
    get_target_property(_dirs ${_target} INTERFACE_INCLUDE_DIRECTORIES)
    if(NOT _dirs)
      continue()
    endif()
    set(_fixed "")
    set(_changed FALSE)
    foreach(_dir IN LISTS _dirs)
      if(_dir MATCHES "^/opt/python/[^/]+/include/")
        set(_dir "${TSA_PYTHON_INCLUDE_DIR}")
        set(_changed TRUE)
      elseif(_dir MATCHES "^/opt/python/.*/numpy/.*include$")
        set(_dir "${TSA_NUMPY_INCLUDE_DIR}")
        set(_changed TRUE)
      endif()
      list(APPEND _fixed "${_dir}")
    endforeach()
    if(_changed)
      set_target_properties(${_target} PROPERTIES INTERFACE_INCLUDE_DIRECTORIES "${_fixed}")
    endif()
  endforeach()
endfunction()

cmake_language(DEFER DIRECTORY "${CMAKE_SOURCE_DIR}" CALL tsa_fix_wheel_include_dirs)
